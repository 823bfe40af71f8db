"""esper-tamiyo-ppo: Esper's learned policy, an LSTM network with factored masked heads trained by PPO."""

from esper_tamiyo_ppo.buffer import RolloutBuffer, SequenceBatch, compute_gae
from esper_tamiyo_ppo.config import PRESETS, NetworkSizes, PPOConfig
from esper_tamiyo_ppo.policy import STATE_FORMAT, STATE_VERSION, PPOPolicy
from esper_tamiyo_ppo.distributions import MASK_VALUE, choose, masked_entropy, masked_log_probs
from esper_tamiyo_ppo.network import PolicyNetwork, StepMasks, parameter_count, relevance_table
from esper_tamiyo_ppo.normalizer import BINARY_FEATURES, ObservationNormalizer, RunningMeanStd
from esper_tamiyo_ppo.ppo import explained_variance, normalize_advantages, ppo_losses, ppo_update

__all__ = [
    "BINARY_FEATURES",
    "MASK_VALUE",
    "NetworkSizes",
    "ObservationNormalizer",
    "PPOConfig",
    "PPOPolicy",
    "PRESETS",
    "PolicyNetwork",
    "RolloutBuffer",
    "RunningMeanStd",
    "STATE_FORMAT",
    "STATE_VERSION",
    "SequenceBatch",
    "StepMasks",
    "choose",
    "compute_gae",
    "explained_variance",
    "masked_entropy",
    "masked_log_probs",
    "normalize_advantages",
    "parameter_count",
    "ppo_losses",
    "ppo_update",
    "relevance_table",
]
