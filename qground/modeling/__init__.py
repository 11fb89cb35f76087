"""Model parts, one file each; ``QGroundModel`` receives them (see ``qground.builder``)."""

from qground.modeling.choice_head import ChoiceHead
from qground.modeling.pixel_decoder import PixelDecoder
from qground.modeling.pixellm_decoder import PixelLMDecoder
from qground.modeling.projector import MultiLayerProjector
from qground.modeling.qground import QGroundModel
from qground.modeling.readout import DistortionReadout
from qground.modeling.seg_head import SegHead

__all__ = [
    "ChoiceHead",
    "DistortionReadout",
    "MultiLayerProjector",
    "PixelDecoder",
    "PixelLMDecoder",
    "QGroundModel",
    "SegHead",
]
