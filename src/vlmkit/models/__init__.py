"""Model folders in and out: resolve and load checkpoints, place them on devices, quantized weights, export."""
