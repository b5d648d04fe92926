# iotpipe — PGXS build, plus the two user-facing commands: `make demo` and `make test`.

EXTENSION   = iotpipe
# the version lives in the control file only
EXTVERSION := $(shell sed -n "s/^default_version *= *'\(.*\)'/\1/p" $(dir $(lastword $(MAKEFILE_LIST)))iotpipe.control)
MODULE_big  = iotpipe
OBJS = \
	src/iotpipe.o \
	src/guc.o \
	src/shmem.o \
	src/status.o \
	src/launcher.o \
	src/jsonmsg.o \
	src/ingest.o \
	src/rowguard.o \
	src/sensors.o \
	src/partition.o \
	src/locks.o \
	src/simulator.o \
	src/simgen.o \
	src/alerts.o \
	src/alert_cache.o \
	src/alert_eval.o \
	src/alert_write.o \
	src/alert_timer.o \
	src/kafka_common.o \
	src/kafka_consumer.o \
	src/kafka_offsets.o \
	src/kafka_producer.o \
	src/etl_collect.o \
	src/etl_transform.o \
	src/etl_write.o \
	src/bulkwrite.o \
	src/spiutil.o \
	src/version.o \
	src/worker.o \
	src/etl_worker.o \
	src/delivery_outbox.o \
	src/delivery_send.o \
	src/delivery_config.o \
	src/delivery_worker.o

# The install script of the version in development is built from the ordered
# fragments in src/sql/.  Released install scripts are frozen in sql/versions/
# (never edited again); sql/upgrade/ holds one script per release step.
SQL_SOURCES = $(sort $(wildcard src/sql/*.sql))
DATA_built  = $(EXTENSION)--$(EXTVERSION).sql
DATA        = $(wildcard sql/versions/$(EXTENSION)--*.sql) \
              $(wildcard sql/upgrade/$(EXTENSION)--*--*.sql)

# Every file in sql/ is a pg_regress test, run in name order.
REGRESS      = $(sort $(basename $(notdir $(wildcard sql/*.sql))))
REGRESS_OPTS = --inputdir=. --use-existing --dbname=iotpipe_regress

PG_CONFIG  ?= pg_config
PG_CPPFLAGS = -I$(srcdir)/src -DIOTPIPE_VERSION='"$(EXTVERSION)"' -Wall -Wextra -Werror -Wno-unused-parameter -Wno-missing-field-initializers -Wno-sign-compare
SHLIB_LINK  = -lrdkafka -lcurl

EXTRA_CLEAN = $(DATA_built)

PGXS := $(shell $(PG_CONFIG) --pgxs)
include $(PGXS)

# PGXS tracks no header dependencies: every object depends on every header
$(OBJS): $(wildcard src/*.h)

$(EXTENSION)--$(EXTVERSION).sql: $(SQL_SOURCES)
	cat $^ > $@

.PHONY: deps test demo demo-stop bench lint
deps:
	@scripts/deps.sh

test: deps
	@scripts/test.sh

demo: deps
	@scripts/demo.sh start

demo-stop:
	@scripts/demo.sh stop

lint:
	@scripts/lint.sh
