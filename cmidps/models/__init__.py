"""Diffusion networks: the ADM UNet, checkpoint loading and the diffusers adapter."""
from .unet import FFHQ_256, IMAGENET_256_UNCOND, UNetModel, create_model, model_kwargs

__all__ = ["UNetModel", "create_model", "model_kwargs", "FFHQ_256", "IMAGENET_256_UNCOND"]
