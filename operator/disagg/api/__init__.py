"""The disagg.dev/v1alpha1 API: InferencePool and DisaggDeployment.

This package imports nothing else of ours (checked by ``lint-imports``); every
other layer builds on it.
"""

from disagg.api.disaggdeployment import DisaggDeployment, DisaggDeploymentSpec
from disagg.api.inferencepool import InferencePool, InferencePoolSpec, PoolSection
from disagg.api.versions import API_VERSION, GROUP, VERSION

__all__ = [
    "API_VERSION",
    "GROUP",
    "VERSION",
    "DisaggDeployment",
    "DisaggDeploymentSpec",
    "InferencePool",
    "InferencePoolSpec",
    "PoolSection",
]
