"""Knowledge distillation of a compressed student from its uncompressed teacher (losses, trainer)."""
from .losses import (LOSSES, chunked_logit_loss, forward_kl_per_token, hidden_state_loss, jsd_per_token,
                     per_token_loss, reverse_kl_per_token, seed_kd_per_token)
from .trainer import batch_loss, distill, select_trainable_
from .tune_scales import tune_scales_

__all__ = ["LOSSES", "batch_loss", "chunked_logit_loss", "distill", "forward_kl_per_token", "hidden_state_loss",
           "jsd_per_token", "per_token_loss", "reverse_kl_per_token", "seed_kd_per_token", "select_trainable_",
           "tune_scales_"]
