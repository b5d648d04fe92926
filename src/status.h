/*-------------------------------------------------------------------------
 *
 * status.h
 *	  How workers publish their state into their slot; iotpipe.worker_status() (status.c).
 *
 *-------------------------------------------------------------------------
 */
#ifndef IOTPIPE_STATUS_H
#define IOTPIPE_STATUS_H

#include "shmem.h"

extern const char *iotpipe_state_name(IotWorkerState state);
extern const char *iotpipe_kind_name(IotWorkerKind kind);
extern void iotpipe_set_state(IotWorkerState state, const char *detail);
/* the same for a given slot (the launcher: a slot without a process, a failed launch) */
extern void iotpipe_slot_set_state(int slotno, IotWorkerState state, const char *detail);
extern void iotpipe_slot_set_error(int slotno, const char *error);
extern void iotpipe_set_error(const char *fmt,...) pg_attribute_printf(1, 2);
extern void iotpipe_clear_error(void);
extern void iotpipe_count(uint64 messages, uint64 rows, uint64 rejected);
extern void iotpipe_update_rate(void);
extern void iotpipe_wake_launcher_now(void);

#endif							/* IOTPIPE_STATUS_H */
