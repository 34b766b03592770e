"""The models and their computation: the conv-base pass, its Ray shards, precision, streamed
batches, training, and the Keras archives models are saved in."""
