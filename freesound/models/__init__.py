"""Models: the registry, the checkpoint format and one file per family.

    registry.py            ``register_model``, ``create_model(name, **params)``, ``list_models``
    checkpoint.py          ``save_checkpoint``, ``load_checkpoint``, ``load_model``
    aux_skip_attention.py  the method's CNN (CBAM attention, skip connections, auxiliary heads)
    simple_cnn.py          a plain 4-block CNN baseline
    timm_family.py         any timm CNN backbone (``name = "timm"``; timm is an optional extra)
    panns.py               the PANNs AudioSet taggers CNN14 / CNN10 / CNN6 (``panns_cnn14``, ...) and
                           their released checkpoints' converter
    efficientat.py         EfficientAT's MobileNetV3 (``name = "efficientat_mn"``, any width) and the
                           converter of its released AudioSet state dicts
    heads.py               the pooled and SED heads (``head = "pooled" | "sed"``), frame-wise logits
    fcnet.py               the MLP stacker

::

    >>> from freesound.models import create_model, list_models
    >>> list_models()
    ['aux_skip_attention', 'efficientat_mn', 'fcnet', 'panns_cnn10', 'panns_cnn14', 'panns_cnn6', 'simple_cnn', 'timm']
    >>> model = create_model("aux_skip_attention", num_classes=80, base_size=64)

First-level models (``aux_skip_attention``, ``simple_cnn``, ``timm``, ``panns_*``, ``efficientat_mn``) take ``(B, 3, n_mels, frames)`` (their
``in_channels`` parameter: 4 planes with ``[input] freq_channel``) and
return a tuple whose first element is the main head's logits ``(B, num_classes)``; the stacker
``fcnet`` takes ``(B, in_channels)`` and returns a logits tensor.
"""

from freesound.models.checkpoint import (
    CHECKPOINT_FORMAT_VERSION,
    CheckpointError,
    load_checkpoint,
    load_model,
    read_torch_file,
    save_checkpoint,
    state_dict_misfit,
)
from freesound.models.registry import canonical_name, create_model, list_models, register_model

# Registering the families is importing them (timm does the same).
from freesound.models import aux_skip_attention, efficientat, fcnet, panns, simple_cnn, timm_family  # noqa: E402,F401  isort: skip

__all__ = [
    "CHECKPOINT_FORMAT_VERSION",
    "CheckpointError",
    "canonical_name",
    "create_model",
    "list_models",
    "load_checkpoint",
    "load_model",
    "read_torch_file",
    "register_model",
    "save_checkpoint",
    "state_dict_misfit",
]
