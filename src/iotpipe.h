/*-------------------------------------------------------------------------
 *
 * iotpipe.h
 *	  Declarations shared by the modules of the iotpipe extension.
 *
 * Module map (one concern per file):
 *	  iotpipe.c    _PG_init, preload check
 *	  guc.c        all iotpipe.* settings
 *	  shmem.c      shared state: worker slots, launcher latch
 *	  status.c     iotpipe.worker_status() and the helpers workers use to
 *	               publish their state
 *	  launcher.c   the launcher worker: supervisor, partition upkeep, timers
 *	  jsonmsg.c    parse and validate one contract message
 *	  ingest.c     the ingest core: batches, direct multi-insert, dead letters
 *	  partition.c  daily partitions of iotpipe.readings
 *	  simgen.c     the deterministic sensor signal generator
 *	  simulator.c  the simulator worker and iotpipe.simulate()
 *	  alerts.c     the alert engine, run inside the ingest transaction
 *	  kafka.c      Kafka consumer workers
 *	  etl.c        the warehouse ETL's per-reading work (run_etl() calls it)
 *
 *-------------------------------------------------------------------------
 */
#ifndef IOTPIPE_H
#define IOTPIPE_H

#include "postgres.h"

#include "datatype/timestamp.h"
#include "lib/stringinfo.h"
#include "port/atomics.h"
#include "storage/latch.h"
#include "storage/lwlock.h"

#define IOTPIPE_MAX_SENSOR_ID	64
#define IOTPIPE_MAX_MESSAGE		65536
#define IOTPIPE_NAMELEN			64
#define IOTPIPE_ERRLEN			256

/* ---------- guc.c ---------- */
extern char *iotpipe_database;
extern int	iotpipe_batch_size;
extern int	iotpipe_flush_interval_ms;
extern int	iotpipe_etl_interval_s;
extern int	iotpipe_raw_retention_s;
extern int	iotpipe_partition_premake_days;
extern int	iotpipe_max_workers;
extern int	iotpipe_launcher_naptime_ms;
extern int	iotpipe_kafka_poll_ms;
extern int	iotpipe_kafka_max_message_bytes;
extern void iotpipe_guc_init(bool preloading);

/* ---------- iotpipe.c ---------- */
extern bool iotpipe_preloaded;
extern void iotpipe_require_preload(void);

/* ---------- shmem.c / status.c ---------- */
typedef enum IotWorkerKind
{
	IOT_WORKER_LAUNCHER,
	IOT_WORKER_SIMULATOR,
	IOT_WORKER_KAFKA
} IotWorkerKind;

typedef enum IotWorkerState
{
	IOT_STATE_FREE = 0,
	IOT_STATE_STARTING,			/* registered, not yet running */
	IOT_STATE_WAITING,			/* waiting for the extension / a resource */
	IOT_STATE_IDLE,				/* running, nothing to do */
	IOT_STATE_RUNNING,			/* running, doing work */
	IOT_STATE_BACKOFF,			/* failed, retrying after a pause */
	IOT_STATE_RECOVERY,			/* server in recovery: doing nothing */
	IOT_STATE_STOPPED			/* exited; slot kept for its counters */
} IotWorkerState;

typedef struct IotWorkerSlot
{
	/* written under IotShared->lock */
	IotWorkerState state;
	IotWorkerKind kind;
	char		name[IOTPIPE_NAMELEN];
	char		detail[IOTPIPE_ERRLEN];
	int			pid;
	int			generation;		/* launcher bumps it to ask the worker to stop */
	int			restarts;
	int			key;			/* kind-specific: kafka source id */
	int			index;			/* kind-specific: worker number in a source */
	int			config_gen;		/* generation of the settings it was started with */
	TimestampTz started_at;
	TimestampTz last_activity;
	TimestampTz last_error_at;
	char		last_error[IOTPIPE_ERRLEN];
	double		rate;			/* messages/s, smoothed */
	/* written by the owning worker without the lock */
	pg_atomic_uint64 messages;
	pg_atomic_uint64 rows;
	pg_atomic_uint64 rejected;
	pg_atomic_uint64 batches;
} IotWorkerSlot;

typedef struct IotShared
{
	LWLock	   *lock;
	int			launcher_pid;
	Latch	   *launcher_latch;
	pg_atomic_uint64 rules_version;	/* bumped on any change of alert rules/silences */
	pg_atomic_uint64 spare[7];	/* room for more counters without a layout change */
	int			nslots;
	IotWorkerSlot slots[FLEXIBLE_ARRAY_MEMBER];
} IotShared;

#define IOT_SLOT_LAUNCHER	0
#define IOT_SLOT_SIMULATOR	1
#define IOT_SLOT_FIRST_KAFKA 2

extern IotShared *iotpipe_shared;
extern void iotpipe_shmem_init(void);

extern const char *iotpipe_state_name(IotWorkerState state);
extern IotWorkerSlot *iotpipe_slot(int slotno);
extern void iotpipe_worker_attach(int slotno, IotWorkerKind kind);
extern void iotpipe_set_state(IotWorkerState state, const char *detail);
extern void iotpipe_set_error(const char *fmt,...) pg_attribute_printf(1, 2);
extern void iotpipe_clear_error(void);
extern void iotpipe_count(uint64 messages, uint64 rows, uint64 rejected);
extern void iotpipe_update_rate(void);
extern bool iotpipe_should_stop(void);
extern void iotpipe_wake_launcher_now(void);
/* fn(arg) in a transaction of its own; false and *err on error, never throws */
extern bool iotpipe_run_xact(void (*fn) (void *), void *arg, const char *what,
							 bool spi, char **err);
extern int	iotpipe_my_slot;
extern int	iotpipe_my_config_gen(void);

/* ---------- jsonmsg.c ---------- */
typedef struct IotReading
{
	char		sensor_id[IOTPIPE_MAX_SENSOR_ID * 4 + 1];	/* UTF-8, NUL-terminated */
	int			sensor_id_len;
	TimestampTz ts;
	bool		has_temperature;
	bool		has_humidity;
	double		temperature;
	double		humidity;
	char	   *location;		/* palloc'd in the batch context, or NULL */
	int			location_len;
} IotReading;

/*
 * Parse one message.  Returns NULL when it is a valid contract message (and
 * fills *out), or a static/palloc'd reason string when it is rejected.
 * Never throws for bad input.  now is the reference for "in the future".
 */
extern const char *iotpipe_parse_message(const char *data, size_t len, IotReading *out,
										 TimestampTz now, MemoryContext strcxt);

/* ---------- ingest.c ---------- */

/*
 * Write n filled slots of one table as COPY does: table_multi_insert, then
 * each slot's index entries; the slots are cleared.  Used by the ingest core
 * and the ETL (etl.c).
 */
struct ResultRelInfo;
struct EState;
struct TupleTableSlot;
struct BulkInsertStateData;
extern void iotpipe_multi_insert(struct ResultRelInfo *rri, struct EState *estate,
								 struct TupleTableSlot **slots, int n, int options,
								 struct BulkInsertStateData *bis);

typedef struct IotSource
{
	const char *source;			/* 'sql', 'simulator', 'kafka' */
	const char *topic;			/* Kafka only */
	int			partition;
	int64		offset;
} IotSource;

typedef struct IotBatch IotBatch;

extern IotBatch *iotpipe_batch_create(MemoryContext parent);
extern void iotpipe_batch_reset(IotBatch *batch);
extern int	iotpipe_batch_count(IotBatch *batch);
/* add one raw message: parsed now; rejects are kept for the dead-letter write */
extern bool iotpipe_batch_add(IotBatch *batch, const char *data, size_t len,
							  const IotSource *src);
/* add a message known to be rejected before parsing (NULL value, too large) */
extern void iotpipe_batch_reject(IotBatch *batch, const char *data, size_t len,
								 const IotSource *src, const char *reason);
/* write the batch in the current transaction; returns rows accepted */
extern void iotpipe_batch_flush(IotBatch *batch, uint64 *accepted, uint64 *rejected);

/* write the sensors held back by this backend (sensors.c), in the current transaction */
extern void iotpipe_ingest_write_sensors(bool all);
/* workers call this when idle (outside a transaction): writes due sensors */
extern void iotpipe_ingest_idle(void);

/* ---------- sensors.c ---------- */
extern int	iotpipe_sensor_refresh_ms;
extern void iotpipe_sensors_note(IotReading *readings, int n);
extern void iotpipe_sensors_write(bool all);	/* SPI connected */
extern bool iotpipe_sensors_pending(void);

/* what the alert engine sees of a batch (accepted readings, in input order) */
extern int	iotpipe_batch_nreadings(IotBatch *batch);
extern IotReading *iotpipe_batch_readings(IotBatch *batch);

/* ---------- partition.c ---------- */
extern void iotpipe_ensure_partitions_for_days(int32 *days, int ndays);
extern int	iotpipe_create_partitions_range(int32 from_day, int32 to_day);
extern int32 iotpipe_ts_day(TimestampTz ts);

/* ---------- simgen.c ---------- */
typedef struct SimGen SimGen;
extern SimGen *simgen_create(int nsensors, int64 seed, double malformed_ratio,
							 TimestampTz start_ts, double interval_s);
/* next message into buf; *ts gets its event time; returns true if malformed */
extern bool simgen_next(SimGen *gen, StringInfo buf, TimestampTz now);
extern int	simgen_sensor_of_last(SimGen *gen);
extern const char *simgen_sensor_id(SimGen *gen, int sensor);
extern void simgen_set_text_safe(SimGen *gen, bool text_safe);

/* ---------- simulator.c ---------- */
extern PGDLLEXPORT void iotpipe_simulator_main(Datum arg);

/* ---------- launcher.c ---------- */
extern PGDLLEXPORT void iotpipe_launcher_main(Datum arg);
extern void iotpipe_launcher_register(void);

/* ---------- alerts.c ---------- */
extern void iotpipe_alerts_process_batch(IotBatch *batch);
extern void iotpipe_alerts_tick(void);	/* timers (offline); in a transaction */
extern void iotpipe_alerts_init(void);

/* ---------- kafka.c ---------- */
extern PGDLLEXPORT void iotpipe_kafka_main(Datum arg);
extern void iotpipe_kafka_init(void);

/* a producer for the simulator's kafka sink (drives librdkafka from the caller's thread) */
typedef struct IotProducer IotProducer;
extern IotProducer *iotpipe_producer_create(const char *brokers, const char *topic,
											char *errbuf, size_t errlen);
/* false when the local queue is full: poll and retry */
extern bool iotpipe_producer_send(IotProducer *p, const char *key, size_t keylen,
								  const char *value, size_t len);
/* serve delivery reports and logs; returns delivery failures seen since last call */
extern int	iotpipe_producer_poll(IotProducer *p, int timeout_ms, char *errbuf, size_t errlen);
extern void iotpipe_producer_destroy(IotProducer *p);

#endif							/* IOTPIPE_H */
