"""What stage 1 reads and writes: manifests, frames, ground truth, calibration files, BVH,
the pseudo-label shard schema, crop shards, the run folder and test videos. Imports only
``pipeline.geometry`` (camera math) and ``pipeline.joints`` from outside."""
