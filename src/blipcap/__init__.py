"""blipcap: fast, production-grade image captioning with BLIP.

    from blipcap import Captioner
    cap = Captioner.load("large")
    cap("photo.jpg")  # -> "a dog running on the beach"
"""

from .captioner import Caption, Captioner
from .pipeline import pipeline
from .options import CaptionOptions, OptionsError
from .spec import ModelSpec
from .hub import ModelNotAvailableError
from .images import ImageError

__version__ = "0.1.0"
__all__ = ["Caption", "CaptionOptions", "Captioner", "ImageError", "ModelNotAvailableError", "ModelSpec", "OptionsError", "pipeline", "__version__"]
