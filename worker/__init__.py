"""RQ workers: load bundles once, decode batches of jobs, encode and store mp4s."""
