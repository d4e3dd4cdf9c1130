"""Metrics. Point-cloud distances and model NLL for 2-D data (:mod:`.toy2d`); FID, KID,
precision/recall and density/coverage on features of a network (:mod:`.fid`, :mod:`.features`),
with one call for a whole report (:func:`evaluate`)."""

from .features import (ClassifierConfig, FeatureClassifier, cached_classifier, digits_feature_network,
                       extract_features, train_classifier)
from .fid import (density_coverage, feature_metrics, fid_from_features, frechet_distance, kernel_inception_distance,
                  precision_recall)
from .inception import load_fid_inception
from .networks import FEATURE_NETWORKS
from .report import evaluate, format_metrics
from .toy2d import model_nll, sliced_wasserstein, wasserstein2

__all__ = ["FEATURE_NETWORKS", "ClassifierConfig", "FeatureClassifier", "cached_classifier", "density_coverage",
           "digits_feature_network", "evaluate", "extract_features", "feature_metrics", "fid_from_features",
           "format_metrics", "frechet_distance", "kernel_inception_distance", "load_fid_inception", "model_nll",
           "precision_recall", "sliced_wasserstein", "train_classifier", "wasserstein2"]
