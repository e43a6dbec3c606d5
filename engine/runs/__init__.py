"""Run directories: a sweep written to disk part by part, resumable, sharded, listed.

- `launch`: a run started from a config and options, or resumed (the API behind `liqstress run`)
- `rundir`: the directory, its manifest and locks (`RunDir`)
- `provenance`: versions, devices and commit recorded in the manifest
- `execute`: parts simulated in sessions, shards, resume, the cube assembled
- `listing`: past runs and their status
- `cube`: the netCDF files of parts and cube
"""
