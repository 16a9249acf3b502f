"""Data layer: image decoding, the NanoTWICE folder layout and the synthetic fibre generator.

Kept free of Ray and torch so it can be imported (and tested) anywhere.
"""
