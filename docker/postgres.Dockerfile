# PostgreSQL 15 with iotpipe built from this tree, with the same build and install
# steps as the Makefile and scripts/pginstall.sh use for the tests:
#   make -s with_llvm=no && make -s with_llvm=no install
# Build context: the repository root (docker compose sets it).
FROM postgres:15-bookworm

RUN apt-get update \
 && apt-get install -y --no-install-recommends \
        build-essential postgresql-server-dev-15 librdkafka-dev libcurl4-openssl-dev \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /usr/src/iotpipe
COPY Makefile iotpipe.control ./
COPY src ./src
COPY sql ./sql
RUN make -s with_llvm=no && make -s with_llvm=no install

# shared_preload_libraries is required (CREATE EXTENSION refuses without it);
# iotpipe.database names the database the launcher works in.
CMD ["postgres", \
     "-c", "shared_preload_libraries=iotpipe", \
     "-c", "iotpipe.database=iotpipe", \
     "-c", "max_worker_processes=32", \
     "-c", "timezone=UTC"]
