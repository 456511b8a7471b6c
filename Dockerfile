# syntax=docker/dockerfile:1
#
# zt-agent (the entrypoint) and ztctl, static binaries on distroless.
#   docker build -t ghcr.io/ztnet/zt-agent:dev .
#   docker buildx build --platform linux/amd64,linux/arm64 -t ... .
# The BPF objects are generated and committed (pkg/datapath/*_bpfel.o), so
# no clang is needed here.

FROM --platform=$BUILDPLATFORM golang:1.26 AS build
ARG TARGETOS=linux
ARG TARGETARCH
WORKDIR /src
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/go/pkg/mod go mod download
# Only the Go sources: the context also holds _out/ (hundreds of MB of
# Kubernetes test binaries) that the image has no use for.
COPY cmd/ cmd/
COPY pkg/ pkg/
COPY internal/ internal/
RUN --mount=type=cache,target=/go/pkg/mod \
    --mount=type=cache,target=/root/.cache/go-build \
    export CGO_ENABLED=0 GOOS=$TARGETOS GOARCH=$TARGETARCH && \
    go build -trimpath -ldflags="-s -w" -o /out/zt-agent ./cmd/zt-agent && \
    go build -trimpath -ldflags="-s -w" -o /out/ztctl ./cmd/ztctl

# nonroot suits ztctl; deploy/daemonset.yaml runs the agent as uid 0 (bpffs
# and the runtime's netns files belong to root) with a few capabilities.
FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/zt-agent /out/ztctl /
ENTRYPOINT ["/zt-agent"]
