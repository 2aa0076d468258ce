"""Pieces that never touch hardware: grammars, the device model, the hook spec."""
