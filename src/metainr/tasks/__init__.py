"""Tasks: one signal type each (query points, observations, forward model, loss, metrics, files),
registered by name so checkpoints and the CLI can rebuild them."""
from .base import TASKS, Batch, Context, Preset, RandomFit, Task, build_task, observe_batch, register_task
from .capabilities import FileDependent, Renderable, Tokenizable, require
from .ct import CTConfig, CTTask
from .image import ImageConfig, ImageTask
from .sdf2d import SDF2DConfig, SDF2DTask
from .sdf3d import SDF3DConfig, SDF3DTask
from .sphere import SphereConfig, SphereTask
from .views import ViewsBatch, ViewsConfig, ViewsTask

__all__ = ["TASKS", "Batch", "Context", "FileDependent", "Preset", "RandomFit", "Renderable", "Task", "Tokenizable",
           "require", "build_task", "observe_batch", "register_task", "ImageConfig",
           "ImageTask", "SDF2DConfig", "SDF2DTask", "SDF3DConfig", "SDF3DTask", "SphereConfig", "SphereTask",
           "CTConfig", "CTTask", "ViewsBatch", "ViewsConfig", "ViewsTask"]
