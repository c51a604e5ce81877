"""Core types: artifacts, formats, precisions, device profiles, manifests, hashing and atomic writes."""

from modelport.core.manifest import MANIFEST_NAME, Manifest
from modelport.core.profiles import DeviceProfile, get_profile, load_profiles
from modelport.core.types import Artifact, Format, Precision, Preprocessing, Status, TensorSpec

__all__ = [
    "MANIFEST_NAME",
    "Artifact",
    "DeviceProfile",
    "Format",
    "Manifest",
    "Precision",
    "Preprocessing",
    "Status",
    "TensorSpec",
    "get_profile",
    "load_profiles",
]
