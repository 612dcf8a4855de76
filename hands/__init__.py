"""Differentiable hand models: kinematics, morphable shape, skinning, limits (all in mm, radians)."""

from .anny_hand import default_hand_data
from .collision import CollisionProxies
from .model import HandModel, HandOutput
from .model_data import BONE_SCALE_NAMES, KEYPOINT_NAMES, HandModelData

__all__ = ["CollisionProxies", "HandModel", "HandModelData", "HandOutput", "KEYPOINT_NAMES", "BONE_SCALE_NAMES", "default_hand_data"]
