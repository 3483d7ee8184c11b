"""Text-to-image on the embedded digits (1,399,137 params): the default U-Net with cross-attention
to a small byte-level text encoder trained jointly, captions from the embedded caption set
("a handwritten seven", "the digit 7", "7, drawn thin", ...), 10% prompt dropout for
classifier-free guidance.

Sample with prompts:
  python launch.py --workdir runs/mnist_text --mode=sample \\
      --config.sampling.prompts='("a handwritten three", "the digit 7")' \\
      --config.sampling.guidance_scale=3.0
Prompt fidelity and FID by guidance scale: python -m experiments.prompt_fidelity runs/mnist_text
"""

from configs import mnist_ddpm


def get_config():
    config = mnist_ddpm.get_config()
    config.conditioning.name = "text"
    config.conditioning.text.dropout = 0.1     # prompt dropout -> the unconditional model
    config.conditioning.text.width = 64        # the text encoder: 2 layers, 4 heads, width 64
    config.conditioning.text.depth = 2
    config.conditioning.text.num_heads = 4
    config.conditioning.text.context_length = 32
    config.model.unet.attn_resolutions = (7, 14)  # cross-attention where self-attention is
    config.sampling.guidance_scale = 3.0
    return config
