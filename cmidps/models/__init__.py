"""Diffusion networks: the ADM UNet (:mod:`.unet`), checkpoint/folder loading (:mod:`.loading`) and
the diffusers adapter (:mod:`.diffusers_adapter`, imported lazily: diffusers is slow to import)."""
from .loading import CheckpointError, load_adm_checkpoint, load_prior, save_network
from .unet import FFHQ_256, IMAGENET_256_UNCOND, UNetModel, create_model, model_kwargs

__all__ = ["UNetModel", "create_model", "model_kwargs", "FFHQ_256", "IMAGENET_256_UNCOND",
           "load_prior", "load_adm_checkpoint", "save_network", "CheckpointError"]
