/*-------------------------------------------------------------------------
 *
 * shmem.h
 *	  Shared state: worker slots, the launcher latch (shmem.c).
 *
 *-------------------------------------------------------------------------
 */
#ifndef IOTPIPE_SHMEM_H
#define IOTPIPE_SHMEM_H

#include "iotpipe.h"
#include "port/atomics.h"
#include "storage/latch.h"
#include "storage/lwlock.h"
#include "datatype/timestamp.h"

typedef enum IotWorkerKind
{
	IOT_WORKER_LAUNCHER,
	IOT_WORKER_SIMULATOR,
	IOT_WORKER_KAFKA,
	IOT_WORKER_ETL,				/* one scheduled run of iotpipe.run_etl() */
	IOT_WORKER_NOTIFIER			/* alert delivery (delivery_worker.c) */
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
	/* alert notifications skipped, NOTIFY queue too full (alert_write.c) */
	pg_atomic_uint64 notifies_skipped;
} IotWorkerSlot;

typedef struct IotShared
{
	LWLock	   *lock;
	int			launcher_pid;
	Latch	   *launcher_latch;
	/* the launcher's probe found iotpipe.database: connect at its next start */
	bool		launcher_db_exists;
	pg_atomic_uint64 rules_version;	/* bumped on any change of alert rules/silences */
	pg_atomic_uint64 spare[7];	/* room for more counters without a layout change */
	int			nslots;
	IotWorkerSlot slots[FLEXIBLE_ARRAY_MEMBER];
} IotShared;

#define IOT_SLOT_LAUNCHER	0
#define IOT_SLOT_SIMULATOR	1
#define IOT_SLOT_ETL		2
#define IOT_SLOT_FIRST_KAFKA 3

extern IotShared *iotpipe_shared;
/* the slot this process owns (a worker), or -1 */
extern int	iotpipe_my_slot;
extern IotWorkerSlot *iotpipe_slot(int slotno);
extern void iotpipe_shmem_init(void);


/* functions that need the workers or shared memory call this first */
extern void iotpipe_require_preload(void);

/* true when this backend is connected to iotpipe.database (where the workers run) */
extern bool iotpipe_in_worker_database(void);

/* functions that act on the workers call this: an error in any other database */
extern void iotpipe_require_worker_database(void);

#endif							/* IOTPIPE_SHMEM_H */
