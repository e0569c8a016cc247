"""Tasks: one signal type each (query points, observations, forward model, loss, metrics, files),
registered by name so checkpoints and the CLI can rebuild them."""
from .base import TASKS, Batch, Context, Task, build_task, observe_batch, register_task
from .ct import CTConfig, CTTask
from .image import ImageConfig, ImageTask
from .views import ViewsBatch, ViewsConfig, ViewsTask

__all__ = ["TASKS", "Batch", "Context", "Task", "build_task", "observe_batch", "register_task", "ImageConfig",
           "ImageTask", "CTConfig", "CTTask", "ViewsBatch", "ViewsConfig", "ViewsTask"]
