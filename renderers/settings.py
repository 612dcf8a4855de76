"""Validation and per-call overrides of the renderers' settings dataclasses."""

from __future__ import annotations

import dataclasses
import math
import numbers


def check_positive(settings, name: str, optional: bool = False) -> None:
    """Raise ValueError unless ``settings.<name>`` is a finite real > 0 (or None if optional)."""
    v = getattr(settings, name)
    if v is None and optional:
        return
    if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v) or v <= 0:
        raise ValueError(f"{name} must be a finite float > 0{' or None' if optional else ''}, got {v!r}")


def check_open_interval(settings, name: str, lo: float, hi: float) -> None:
    """Raise ValueError unless ``settings.<name>`` is a real number in ``(lo, hi)``."""
    v = getattr(settings, name)
    if isinstance(v, bool) or not isinstance(v, numbers.Real) or not lo < v < hi:
        raise ValueError(f"{name} must be a float in ({lo:g}, {hi:g}), got {v!r}")


def check_bool(settings, name: str) -> None:
    """Raise ValueError unless ``settings.<name>`` is a bool."""
    if not isinstance(getattr(settings, name), bool):
        raise ValueError(f"{name} must be a bool, got {getattr(settings, name)!r}")


def checked_settings(settings, cls):
    """A renderer's settings: ``cls()`` for None, else ``settings`` checked to be a valid ``cls``.

    Raises:
        ValueError: ``settings`` is not a ``cls``, or a field is out of range (``validate``).
    """
    if settings is None:
        settings = cls()
    if not isinstance(settings, cls):
        raise ValueError(f"settings must be a {cls.__name__}, got {type(settings).__name__}")
    settings.validate()
    return settings


def resolve_settings(settings, overrides: dict):
    """``settings`` with the per-call ``overrides`` applied, validated.

    Raises:
        ValueError: an override names no field of the settings class (the message lists the
            valid names), or a value is out of range (from the class's ``validate``).
    """
    if not overrides:
        return settings
    fields = {f.name for f in dataclasses.fields(settings)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(f"unknown setting override(s) {unknown}; valid names: {sorted(fields)}")
    settings = dataclasses.replace(settings, **overrides)
    settings.validate()
    return settings


class NDCBlurMixin:
    """The blur conversions of settings with ``sigma`` (squared NDC), ``sigma_px`` and
    ``blur_eps`` fields: PyTorch3D's units (the shorter image side spans 2 NDC units, and
    ``sigma`` divides a *squared* distance) and its blur-radius rule
    (``blur_radius = log(1 / blur_eps - 1) * sigma``, see ``SoftSilhouetteShader``)."""

    def sigma_ndc(self, height: int, width: int) -> float:
        """The blend sigma in PyTorch3D's squared-NDC units for a ``height x width`` px
        image: ``sigma``, or ``(2 * sigma_px / min(height, width)) ** 2`` when ``sigma_px``
        is set."""
        if self.sigma_px is not None:
            return (2.0 * self.sigma_px / min(height, width)) ** 2
        return float(self.sigma)

    def sigma_in_pixels(self, height: int, width: int) -> float:
        """``sigma_px`` (pixels) that these settings mean for a ``height x width`` image."""
        return math.sqrt(self.sigma_ndc(height, width)) * min(height, width) / 2.0

    def blur_radius(self, height: int, width: int) -> float:
        """The rasterizer's blur radius in squared NDC units:
        ``log(1 / blur_eps - 1) * sigma_ndc(height, width)``."""
        return math.log(1.0 / self.blur_eps - 1.0) * self.sigma_ndc(height, width)

    def blur_radius_px(self, height: int, width: int) -> float:
        """The blur radius as a distance in pixels:
        ``sigma_in_pixels * sqrt(log(1 / blur_eps - 1))``."""
        return math.sqrt(self.blur_radius(height, width)) * min(height, width) / 2.0
