"""Bridges to other libraries, each importing its library lazily (install with ``denoisekit[bench]``).

- :mod:`denoisekit.compat.diffusers`: drive a diffusers scheduler with any network, read the exact
  noise-level grid it uses, and build schedulers that match a denoisekit DDPM process.
"""
