"""Training entry points, run as ``latentdiff train KIND`` or ``accelerate launch -m latentdiff.train.KIND``.

- :mod:`latentdiff.train.vae`: the autoencoder (L1/L2 + KL [+ PatchGAN]), measures the latent scaling factor.
- :mod:`latentdiff.train.unet`: the text-conditioned U-Net on cached latents and text embeddings.
- :mod:`latentdiff.train.common`: what they share (config sections, Accelerate, atomic checkpoints, caching).

Each trainer's loop is one function, ``train(cfg)``, that reads top to bottom.
"""
