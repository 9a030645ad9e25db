"""geopref inside TRL 1.x (written against TRL 1.16.0; needs trl and transformers).

GeoprefDPOTrainer / GeoprefDPOConfig: TRL's DPOTrainer with geopref's
preference loss from the hidden states and the lm_head (docs/trl.md).
"""
from .trainer import (GeoprefDPOConfig, GeoprefDPOTrainer, GeoprefPreferenceCollator,
                      logit_transform_of)

__all__ = ["GeoprefDPOConfig", "GeoprefDPOTrainer", "GeoprefPreferenceCollator",
           "logit_transform_of"]
