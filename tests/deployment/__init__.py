"""Tests of the container deployment: Dockerfile, docker-compose.yml and the docker/ entrypoints."""
