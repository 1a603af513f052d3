"""Token-by-token generation: samplers here; cached decoding (issue 13) builds on them."""
