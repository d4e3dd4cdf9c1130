"""The built-in feature networks by dataset name: ``FEATURE_NETWORKS[name](cache_dir=...)`` trains one on first
use and caches it (:func:`~denoisekit.eval.features.cached_classifier`). Each has a ``label_head`` that reads the
dataset's label, so the classifier accuracy of class-conditional samples is measured with it too. The shapes
attribute network has no such head and its own entry point
(:func:`~denoisekit.eval.alignment.shapes_feature_network`); :data:`denoisekit.eval.report.BUILTIN_NETWORKS`
adds it to these."""

from __future__ import annotations

from collections.abc import Callable

from .feature_net import FeatureClassifier
from .features import digits_feature_network
from .shapes3 import shapes3_feature_network

FEATURE_NETWORKS: dict[str, Callable[..., FeatureClassifier]] = {"digits": digits_feature_network,
                                                                 "shapes3": shapes3_feature_network}
