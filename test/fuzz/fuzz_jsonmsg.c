/*-------------------------------------------------------------------------
 *
 * fuzz_jsonmsg.c
 *	  libFuzzer target for the contract message parser (src/jsonmsg.c),
 *	  built with AddressSanitizer and UndefinedBehaviorSanitizer by
 *	  scripts/fuzz.sh.
 *
 *	  Besides "does not crash, leak or read out of bounds", every input is
 *	  checked against what the rest of the pipeline relies on:
 *	    - a rejection has a reason: a non-empty, NUL-terminated string;
 *	    - an accepted reading obeys the message contract (README,
 *	      "Message contract"): a sensor_id of 1..64 characters without NUL,
 *	      a timestamp from 2000-01-01 to a day after now, at least one of
 *	      temperature and humidity, each finite and inside its bounds, a
 *	      location of at most 256 characters;
 *	    - the parser is deterministic: the same bytes parse to the same
 *	      outcome twice.
 *	  Any violation aborts, which libFuzzer reports as a crash with the
 *	  input saved.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "jsonmsg.h"
#include "pgshim.h"

/* a fixed "now": 2026-12-01 00:00:00 UTC, so runs are reproducible */
#define FUZZ_NOW	((TimestampTz) 9831 * USECS_PER_DAY)

#define CHECK(cond) \
	do { \
		if (!(cond)) \
		{ \
			fprintf(stderr, "fuzz_jsonmsg: invariant failed: %s (line %d)\n", #cond, __LINE__); \
			abort(); \
		} \
	} while (0)

static void
check_accepted(const IotReading *r)
{
	CHECK(r->sensor_id_len >= 1);
	CHECK(r->sensor_id_len <= IOTPIPE_MAX_SENSOR_ID * 4);
	CHECK(r->sensor_id[r->sensor_id_len] == '\0');
	CHECK((int) strlen(r->sensor_id) == r->sensor_id_len);
	CHECK(r->ts >= 0);
	CHECK(r->ts <= FUZZ_NOW + USECS_PER_DAY);
	CHECK(r->has_temperature || r->has_humidity);
	if (r->has_temperature)
		CHECK(isfinite(r->temperature) &&
			  r->temperature >= IOTPIPE_TEMPERATURE_MIN &&
			  r->temperature <= IOTPIPE_TEMPERATURE_MAX);
	if (r->has_humidity)
		CHECK(isfinite(r->humidity) &&
			  r->humidity >= IOTPIPE_HUMIDITY_MIN &&
			  r->humidity <= IOTPIPE_HUMIDITY_MAX);
	if (r->location != NULL)
	{
		CHECK(r->location_len >= 0 && r->location_len <= 256 * 4);
		CHECK(r->location[r->location_len] == '\0');
		CHECK((int) strlen(r->location) == r->location_len);
	}
}

static bool
same_reading(const IotReading *a, const IotReading *b)
{
	if (a->sensor_id_len != b->sensor_id_len ||
		memcmp(a->sensor_id, b->sensor_id, a->sensor_id_len) != 0 ||
		a->ts != b->ts ||
		a->has_temperature != b->has_temperature ||
		a->has_humidity != b->has_humidity ||
		(a->has_temperature && a->temperature != b->temperature) ||
		(a->has_humidity && a->humidity != b->humidity) ||
		(a->location == NULL) != (b->location == NULL))
		return false;
	return a->location == NULL ||
		(a->location_len == b->location_len &&
		 memcmp(a->location, b->location, a->location_len) == 0);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	IotReading	r1,
				r2;
	const char *e1;
	const char *e2;

	/* exact-size copy: any read past the end is a heap overflow for ASan */
	char	   *buf = malloc(size ? size : 1);

	if (buf == NULL)
		abort();
	memcpy(buf, data, size);

	memset(&r1, 0x7f, sizeof(r1));
	memset(&r2, 0x3c, sizeof(r2));
	e1 = iotpipe_parse_message(buf, size, &r1, FUZZ_NOW, NULL);
	e2 = iotpipe_parse_message(buf, size, &r2, FUZZ_NOW, NULL);

	CHECK((e1 == NULL) == (e2 == NULL));
	if (e1 == NULL)
	{
		check_accepted(&r1);
		CHECK(same_reading(&r1, &r2));
	}
	else
	{
		CHECK(e1[0] != '\0');
		CHECK(strlen(e1) < 1024);
		CHECK(strcmp(e1, e2) == 0);
	}

	free(buf);
	shim_reset();
	return 0;
}
