"""The retired `/v1/fine-tunes` API of the 0.x SDK and CLI (seeds 000 and 003), over the same jobs."""
