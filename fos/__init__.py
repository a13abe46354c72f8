"""fos: foreground object search (DiscoFOS). ``import fos`` needs only torch and numpy."""
from fos.checkpoint import load_checkpoint, save_checkpoint
from fos.registry import build_model, list_models

__all__ = ["build_model", "list_models", "load_checkpoint", "save_checkpoint"]
