"""Tasks: one signal type each (query points, observations, forward model, loss, metrics, files),
registered by name so checkpoints and the CLI can rebuild them."""
from .audio import AudioConfig, AudioTask
from .base import (ENTRY_POINT_GROUP, TASKS, Batch, Context, Preset, RandomFit, Task, build_task, load_task_plugins,
                   observe_batch, register_task)
from .capabilities import FileDependent, FrameRows, Renderable, Tokenizable, field_dims, for_field, require
from .ct import CTConfig, CTTask
from .image import ImageConfig, ImageTask
from .sdf2d import SDF2DConfig, SDF2DTask
from .sdf3d import SDF3DConfig, SDF3DTask
from .sphere import SphereConfig, SphereTask
from .video import VideoConfig, VideoTask
from .views import ViewsBatch, ViewsConfig, ViewsTask

load_task_plugins()  # tasks other packages install (entry-point group "metainr.tasks"), after the built-in ones

__all__ = ["ENTRY_POINT_GROUP", "TASKS", "Batch", "Context", "FileDependent", "FrameRows", "Preset", "RandomFit",
           "Renderable", "Task", "Tokenizable", "field_dims", "for_field", "load_task_plugins", "require",
           "build_task", "observe_batch", "register_task", "AudioConfig", "AudioTask", "ImageConfig", "ImageTask",
           "SDF2DConfig", "SDF2DTask", "SDF3DConfig", "SDF3DTask", "SphereConfig", "SphereTask", "CTConfig", "CTTask",
           "VideoConfig", "VideoTask", "ViewsBatch", "ViewsConfig", "ViewsTask"]
