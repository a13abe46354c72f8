"""fos: foreground object search (DiscoFOS). ``import fos`` needs only torch and numpy."""
from fos.checkpoint import save_checkpoint
from fos.registry import build_model, list_models, load_checkpoint

__all__ = ["build_model", "list_models", "load_checkpoint", "save_checkpoint"]
