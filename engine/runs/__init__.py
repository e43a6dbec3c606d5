"""Run directories: manifests, parts, sessions, shards, resume, listing and result cubes."""
