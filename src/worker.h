/*-------------------------------------------------------------------------
 *
 * worker.h
 *	  The runtime every iotpipe background worker runs on (worker.c):
 *	  start-up (signals, connection, slot), the one wait primitive, the
 *	  transaction wrapper, and the slot API the launcher supervises with.
 *
 *	  A worker's life:
 *
 *		iotpipe_worker_init(slotno, kind);
 *		while (!iotpipe_worker_should_stop())
 *		{
 *			... iotpipe_worker_xact(do_work, &arg, "doing work", true) ...
 *			iotpipe_worker_wait(timeout_ms, PGINVALID_SOCKET);
 *		}
 *		proc_exit(0);
 *
 *	  SIGTERM and SIGHUP set flags and the process latch, so a wait returns
 *	  at once; iotpipe_worker_wait() reloads the configuration itself.
 *	  Workers that wait on something besides the latch (the Kafka consumer:
 *	  librdkafka's queue through rd_kafka_queue_io_event_enable) pass its
 *	  file descriptor.  See src/README.md for each worker's state machine.
 *
 *-------------------------------------------------------------------------
 */
#ifndef IOTPIPE_WORKER_H
#define IOTPIPE_WORKER_H

#include "shmem.h"

#include "fmgr.h"
#include "storage/latch.h"

/* ---------- the worker side ---------- */

/*
 * Start-up of a worker: SIGTERM/SIGHUP handlers, signals unblocked, a
 * connection to iotpipe.database, the slot claimed (a worker whose slot is
 * held by another live process exits quietly).  The ETL worker's SIGTERM
 * is the backend's die(): it cancels the running statement.
 */
extern void iotpipe_worker_init(int slotno, IotWorkerKind kind);

/*
 * The one wait: until the latch is set (a signal, the launcher, a
 * committed change), sock is readable (unless PGINVALID_SOCKET) or
 * timeout_ms passed (-1: no timeout).  Exits on postmaster death, serves
 * interrupts and reloads the configuration after SIGHUP.  Returns the
 * WL_* events that ended the wait.
 */
extern int	iotpipe_worker_wait(long timeout_ms, pgsocket sock);

/* interrupts and a pending configuration reload, without waiting */
extern void iotpipe_worker_handle_interrupts(void);

/* SIGTERM arrived, or the launcher asked this worker to stop */
extern bool iotpipe_worker_should_stop(void);

/* the generation of the settings this worker was started with */
extern int	iotpipe_my_config_gen(void);

/*
 * fn(arg) in a transaction of its own, with a snapshot (and SPI connected
 * when spi).  Never throws: on error the transaction is rolled back, the
 * error is logged (prefixed with the worker's name and what) and published
 * as the slot's last error, and false is returned.
 */
extern bool iotpipe_worker_xact(void (*fn) (void *), void *arg, const char *what, bool spi);

/* the same without logging: *err gets the message, in the caller's context */
extern bool iotpipe_run_xact(void (*fn) (void *), void *arg, const char *what,
							 bool spi, char **err);

/* ---------- the launcher side: every slot field is written under the lock ---------- */

/* a consistent copy of a slot's locked fields (counters are read atomically) */
extern void iotpipe_slot_read(int slotno, IotWorkerSlot *copy);

/* a slot about to get a (re)launched worker: identity, settings, "starting" */
extern void iotpipe_slot_prepare(int slotno, IotWorkerKind kind, int key, int index,
								 int config_gen, const char *name);

/* a slot handed to a new worker: fresh counters, no history */
extern void iotpipe_slot_reset(int slotno);

/* ask a slot's worker to stop (it sees a new generation); returns its pid or 0 */
extern int	iotpipe_slot_request_stop(int slotno);

/* iotpipe_slot_set_state / iotpipe_slot_set_error: status.h */

#endif							/* IOTPIPE_WORKER_H */
