"""EAGLE-3 speculative decoding with interchangeable tree-mask builders."""
from .config import ConfigError, ModelArgs, TreeConfig
from .ea_model import EaModel, GenerationResult
from .tree.masks import MASK_IMPLS, TreeBuffers, build_tree_buffers

__all__ = ["EaModel", "GenerationResult", "ModelArgs", "TreeConfig", "ConfigError", "MASK_IMPLS",
           "TreeBuffers", "build_tree_buffers"]
