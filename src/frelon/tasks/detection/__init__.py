"""Object detection as points (CenterNet): targets, loss, decoding, data and the task the engine trains."""
