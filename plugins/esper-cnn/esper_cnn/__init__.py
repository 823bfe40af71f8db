"""esper-cnn: a convolutional host family and image seed families for Esper, registered as a plugin."""

from esper_cnn.host import PRESETS, CNNHost, CNNHostConfig, HostPreset, build_cnn_host
from esper_cnn.seeds import (
    AttentionSeedConfig,
    BottleneckSeedConfig,
    ConvSmallSeedConfig,
    ResidualSeed,
    SqueezeExcitationSeed,
    build_attention,
    build_bottleneck,
    build_conv_heavy,
    build_conv_light,
    build_conv_small,
    build_depthwise,
    build_norm,
)

__version__ = "0.1.0"

__all__ = [
    "PRESETS",
    "AttentionSeedConfig",
    "BottleneckSeedConfig",
    "CNNHost",
    "CNNHostConfig",
    "ConvSmallSeedConfig",
    "HostPreset",
    "ResidualSeed",
    "SqueezeExcitationSeed",
    "__version__",
    "build_attention",
    "build_bottleneck",
    "build_cnn_host",
    "build_conv_heavy",
    "build_conv_light",
    "build_conv_small",
    "build_depthwise",
    "build_norm",
]
