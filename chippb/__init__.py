"""Generated protobuf and gRPC stubs for Chip Ingress. Do not edit: run `just proto`."""
