"""geopref inside TRL 1.x (written against TRL 1.16.0; needs trl and transformers).

The fused LM head (head.py), a drop-in for TRL's:

    import geopref_torch.trl as gtrl

    gtrl.add_fused_lm_head(model, temperature=0.7, outputs=("log_probs", "entropy"))
    out = model(input_ids=ids, attention_mask=mask, labels=labels, fused_lm_head=True)
    out.log_probs, out.entropy, out.loss          # TRL's FusedCausalLMOutput

    with gtrl.use_geopref_head():                 # stock trainers built here use it
        trainer = trl.GRPOTrainer(...)
    trainer.train()

GeoprefDPOTrainer / GeoprefDPOConfig (trainer.py): TRL's DPOTrainer with
geopref's preference loss from the hidden states and the lm_head (docs/trl.md).

Importing this package imports trl.trainer.utils when TRL is installed (its
FusedCausalLMOutput is the head's output type; without TRL a class with the same
fields stands in); install_geopref_head and use_geopref_head import the trainer
modules they patch.
"""
from .head import (FusedCausalLMOutput, TRL_MODULES, add_fused_lm_head, head_logit_transform,
                   install_geopref_head, uninstall_geopref_head, use_geopref_head)
from .trainer import GeoprefDPOConfig, GeoprefDPOTrainer, GeoprefPreferenceCollator

__all__ = ["FusedCausalLMOutput", "TRL_MODULES", "add_fused_lm_head", "head_logit_transform",
           "install_geopref_head", "uninstall_geopref_head", "use_geopref_head",
           "GeoprefDPOConfig", "GeoprefDPOTrainer", "GeoprefPreferenceCollator"]
