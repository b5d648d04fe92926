/*-------------------------------------------------------------------------
 *
 * guc.h
 *	  All iotpipe.* settings (guc.c).
 *
 *-------------------------------------------------------------------------
 */
#ifndef IOTPIPE_GUC_H
#define IOTPIPE_GUC_H

#include "iotpipe.h"

extern char *iotpipe_database;
extern int	iotpipe_batch_size;
extern int	iotpipe_sensor_refresh_ms;
extern int	iotpipe_flush_interval_ms;
extern int	iotpipe_etl_interval_s;
extern int	iotpipe_raw_retention_s;
extern int	iotpipe_partition_premake_days;
extern int	iotpipe_etl_lock_timeout_ms;
extern int	iotpipe_max_workers;
extern int	iotpipe_launcher_naptime_ms;
extern int	iotpipe_kafka_poll_ms;
extern int	iotpipe_kafka_max_message_bytes;
extern char *iotpipe_secrets_dir;
extern double iotpipe_notify_queue_limit;
extern bool iotpipe_notify_ids_only;
/* alert delivery (delivery_worker.c) */
extern int	iotpipe_notify_timeout_ms;
extern int	iotpipe_notify_concurrency;
extern int	iotpipe_notify_max_attempts;
extern int	iotpipe_notify_max_age_s;
extern int	iotpipe_notify_retry_base_ms;
extern int	iotpipe_notify_retry_max_ms;
extern void iotpipe_guc_init(bool preloading);

#endif							/* IOTPIPE_GUC_H */
