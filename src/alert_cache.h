/*-------------------------------------------------------------------------
 *
 * alert_cache.h
 *	  The alert engine's backend-local copies of iotpipe.alert_rules,
 *	  iotpipe.silences and the firing alerts, their invalidation, and the
 *	  per-sensor states (alert_cache.c).
 *
 *-------------------------------------------------------------------------
 */
#ifndef IOTPIPE_ALERT_CACHE_H
#define IOTPIPE_ALERT_CACHE_H

#include "alert_eval.h"

#include "utils/hsearch.h"

typedef struct FiringKey
{
	int32		rule_id;
	char		sensor_id[ALERT_SENSOR_KEYLEN];
} FiringKey;

typedef struct FiringEntry
{
	FiringKey	key;
	int64		alert_id;
	TimestampTz started_at;
} FiringEntry;

/* the rules loaded last; valid until the next refresh or abort */
extern AlertRuleSet iotpipe_alert_rules;

/*
 * Generations, bumped whenever the rules (or the firing set) are reloaded or
 * dropped: a sensor's states are current when built and synced for these.
 */
extern uint64 iotpipe_alert_rules_gen;
extern uint64 iotpipe_alert_firing_gen;

/* _PG_init: the shared-memory request and startup hooks of the engine */
extern void iotpipe_alert_cache_init(void);

/*
 * Reload what changed since this backend last looked (SPI connected); marks
 * the engine as run in this transaction when there are rules, so its state
 * is dropped if the transaction aborts.  Returns the number of rules.
 */
extern int	iotpipe_alert_cache_refresh(void);

/*
 * The state of the reading's sensor: found or created, its location kept
 * current (a move brings other rules in scope).  Unless
 * iotpipe_alert_sensor_current(), call iotpipe_alert_sensor_sync() before
 * evaluating: it rebuilds the rule states for the current rules when
 * iotpipe_alert_sensor_stale() (freeing the old ones: flush the queued
 * events that point into them first) and syncs them with the firing set.
 */
extern SensorState *iotpipe_alert_sensor(const IotReading *rd);
extern void iotpipe_alert_sensor_sync(SensorState *se);

static inline bool
iotpipe_alert_sensor_stale(const SensorState *se)
{
	return se->rules_gen != iotpipe_alert_rules_gen;
}

static inline bool
iotpipe_alert_sensor_current(const SensorState *se)
{
	return se->rules_gen == iotpipe_alert_rules_gen &&
		se->firing_gen == iotpipe_alert_firing_gen;
}

/* this backend's copy of the firing alerts, (rule_id, sensor_id) -> alert_id */
extern FiringEntry *iotpipe_alert_firing(int32 rule_id, const char *sensor_id,
										 HASHACTION action);

/* whether a silence in force covers the rule and sensor */
extern bool iotpipe_alert_silenced(const AlertRule *r, const char *sensor_id,
								   const char *location);

/*
 * What the writer (alert_write.c) tells the cache: it is writing
 * iotpipe.alerts (the trigger then knows the change is ours), it changed
 * iotpipe.alerts (others are told at commit), or the copy of the firing set
 * is no longer to be trusted (reloaded at the next batch).
 */
extern void iotpipe_alert_cache_writing(bool writing);
extern void iotpipe_alert_cache_wrote(void);
extern void iotpipe_alert_cache_firing_stale(void);

#endif							/* IOTPIPE_ALERT_CACHE_H */
