/*-------------------------------------------------------------------------
 *
 * simgen.c
 *	  The simulator's signal generator: realistic, deterministic sensor
 *	  readings as contract messages.
 *
 *	  Each sensor has its own PRNG seeded from (seed, sensor number), so its
 *	  stream depends only on the seed and on how many readings it has made,
 *	  never on timing.  Sensors take turns round-robin.  A reading is
 *
 *	    temperature = location baseline + daily cycle (event time)
 *	                  + slow drift (random walk) + gaussian noise
 *	                  + overheating episode (a half-sine bump over minutes)
 *	                  + occasional spike (one reading)
 *	    humidity    = baseline - 1.5 x (temperature - baseline) + noise,
 *	                  clamped to 0..100 (moves against temperature)
 *
 *	  plus stuck values (the same reading repeated for a while), sensors
 *	  that go silent for a number of turns, and a configurable share of
 *	  malformed messages of ten kinds.  Event time is either the wall clock
 *	  (the worker) or virtual: start_ts + n x step (iotpipe.simulate() and
 *	  reproducible runs).
 *
 *-------------------------------------------------------------------------
 */
#include "iotpipe.h"
#include "simgen.h"

#include <math.h>

#include "utils/datetime.h"
#include "utils/timestamp.h"

typedef struct SimLocation
{
	const char *name;
	double		temp;
	double		humidity;
	double		amplitude;		/* of the daily cycle */
} SimLocation;

static const SimLocation locations[] = {
	{"plant-a/line-1", 24.0, 40.0, 2.5},
	{"plant-a/line-2", 26.0, 38.0, 2.5},
	{"plant-b/furnace", 35.0, 25.0, 4.0},
	{"plant-b/assembly", 22.0, 45.0, 2.0},
	{"warehouse/cold-room", 4.0, 80.0, 0.8},
	{"warehouse/dock", 15.0, 60.0, 5.0},
	{"datacenter/row-1", 21.0, 35.0, 0.5},
	{"office/floor-2", 21.5, 42.0, 1.5},
};

typedef struct SimSensor
{
	uint64		rng;
	char		id[24];
	int			loc;
	double		base_t;
	double		base_h;
	double		amp;
	double		phase;
	double		noise_t;
	double		noise_h;
	double		drift;
	int			episode_left;
	int			episode_len;
	double		episode_peak;
	int			stuck_left;
	double		stuck_t;
	double		stuck_h;
	int			silent_left;
} SimSensor;

struct SimGen
{
	int			nsensors;
	SimSensor  *sensors;
	int			next;			/* next sensor to take its turn */
	int			last;			/* sensor of the last message */
	double		malformed_ratio;
	bool		virtual_time;
	TimestampTz start_ts;
	double		step_us;
	uint64		emitted;
	bool		text_safe;		/* never emit invalid UTF-8 */
	bool		skipping;		/* simgen_skip(): state only, no message */
};

/* splitmix64: tiny, fast, good enough, and trivially seedable */
static inline uint64
next_u64(uint64 *state)
{
	uint64		z = (*state += UINT64CONST(0x9E3779B97F4A7C15));

	z = (z ^ (z >> 30)) * UINT64CONST(0xBF58476D1CE4E5B9);
	z = (z ^ (z >> 27)) * UINT64CONST(0x94D049BB133111EB);
	return z ^ (z >> 31);
}

static inline double
uniform(uint64 *state)
{
	return (next_u64(state) >> 11) * (1.0 / 9007199254740992.0);
}

static inline double
gaussian(uint64 *state)
{
	double		u1 = uniform(state);
	double		u2 = uniform(state);

	if (u1 < 1e-300)
		u1 = 1e-300;
	return sqrt(-2.0 * log(u1)) * cos(2.0 * M_PI * u2);
}

static inline int
uniform_int(uint64 *state, int lo, int hi)
{
	return lo + (int) (uniform(state) * (hi - lo + 1));
}

SimGen *
simgen_create(int nsensors, int64 seed, double malformed_ratio,
			  TimestampTz start_ts, double interval_s)
{
	SimGen	   *gen = palloc0(sizeof(SimGen));
	int			i;

	gen->nsensors = nsensors;
	gen->sensors = palloc0(sizeof(SimSensor) * nsensors);
	gen->malformed_ratio = malformed_ratio;
	gen->virtual_time = (start_ts != DT_NOBEGIN);
	gen->start_ts = start_ts;
	gen->step_us = interval_s * USECS_PER_SEC;
	gen->text_safe = false;

	for (i = 0; i < nsensors; i++)
	{
		SimSensor  *s = &gen->sensors[i];
		uint64		st = (uint64) seed * UINT64CONST(0x9E3779B97F4A7C15) + (uint64) (i + 1);
		const SimLocation *loc;

		(void) next_u64(&st);
		s->rng = next_u64(&st);
		snprintf(s->id, sizeof(s->id), "sensor-%04d", i + 1);
		s->loc = i % lengthof(locations);
		loc = &locations[s->loc];
		s->base_t = loc->temp + gaussian(&s->rng) * 1.0;
		s->base_h = loc->humidity + gaussian(&s->rng) * 3.0;
		s->amp = loc->amplitude * (0.7 + 0.6 * uniform(&s->rng));
		s->phase = (uniform(&s->rng) - 0.5) * 0.1;
		s->noise_t = 0.05 + 0.15 * uniform(&s->rng);
		s->noise_h = 0.2 + 0.5 * uniform(&s->rng);
	}
	return gen;
}

void
simgen_set_text_safe(SimGen *gen, bool text_safe)
{
	gen->text_safe = text_safe;
}

int
simgen_sensor_of_last(SimGen *gen)
{
	return gen->last;
}

const char *
simgen_sensor_id(SimGen *gen, int sensor)
{
	return gen->sensors[sensor].id;
}

/* append n as exactly width digits (zero-padded) */
static inline char *
put_digits(char *p, int64 n, int width)
{
	char	   *end = p + width;

	while (width-- > 0)
	{
		p[width] = '0' + (n % 10);
		n /= 10;
	}
	return end;
}

/* "YYYY-MM-DDTHH:MM:SS.mmmZ": the hot path, without snprintf */
static void
append_ts(StringInfo buf, TimestampTz ts)
{
	int64		days = ts / USECS_PER_DAY;
	int64		us = ts % USECS_PER_DAY;
	int			y,
				m,
				d;
	char		tmp[32];
	char	   *p = tmp;

	if (us < 0)
	{
		us += USECS_PER_DAY;
		days--;
	}
	j2date((int) days + POSTGRES_EPOCH_JDATE, &y, &m, &d);
	p = put_digits(p, y, 4);
	*p++ = '-';
	p = put_digits(p, m, 2);
	*p++ = '-';
	p = put_digits(p, d, 2);
	*p++ = 'T';
	p = put_digits(p, us / USECS_PER_HOUR, 2);
	*p++ = ':';
	p = put_digits(p, (us / USECS_PER_MINUTE) % 60, 2);
	*p++ = ':';
	p = put_digits(p, (us / USECS_PER_SEC) % 60, 2);
	*p++ = '.';
	p = put_digits(p, (us / 1000) % 1000, 3);
	*p++ = 'Z';
	appendBinaryStringInfo(buf, tmp, p - tmp);
}

/* a value with two decimals (like %.2f, rounding half away from zero) */
static void
append_fixed2(StringInfo buf, double v)
{
	char		tmp[32];
	char	   *p = tmp + sizeof(tmp);
	int64		n;
	bool		neg = v < 0;

	if (!(v > -1e15 && v < 1e15))
	{
		appendStringInfo(buf, "%.2f", v);
		return;
	}
	n = (int64) ((neg ? -v : v) * 100.0 + 0.5);
	*--p = '0' + n % 10;
	n /= 10;
	*--p = '0' + n % 10;
	n /= 10;
	*--p = '.';
	do
	{
		*--p = '0' + n % 10;
		n /= 10;
	} while (n > 0);
	if (neg && strncmp(p, "0.00", 4) != 0)
		*--p = '-';
	appendBinaryStringInfo(buf, p, tmp + sizeof(tmp) - p);
}

static void
append_valid(StringInfo buf, SimSensor *s, TimestampTz ts, double t, double h)
{
	appendStringInfoString(buf, "{\"sensor_id\":\"");
	appendStringInfoString(buf, s->id);
	appendStringInfoString(buf, "\",\"ts\":\"");
	append_ts(buf, ts);
	appendStringInfoString(buf, "\",\"temperature\":");
	append_fixed2(buf, t);
	appendStringInfoString(buf, ",\"humidity\":");
	append_fixed2(buf, h);
	appendStringInfoString(buf, ",\"location\":\"");
	appendStringInfoString(buf, locations[s->loc].name);
	appendStringInfoString(buf, "\"}");
}

/*
 * Produce the next message into buf (appended).  Returns true when the
 * message is deliberately malformed.
 */
bool
simgen_next(SimGen *gen, StringInfo buf, TimestampTz now)
{
	SimSensor  *s = NULL;
	TimestampTz ts;
	double		t,
				h,
				clean_t,
				unix_s,
				dayfrac;
	int			tries;

	/* the next sensor that is not silent (silence counts in turns) */
	for (tries = 0; tries < gen->nsensors; tries++)
	{
		SimSensor  *c = &gen->sensors[gen->next];

		gen->last = gen->next;
		gen->next = (gen->next + 1) % gen->nsensors;
		if (c->silent_left > 0)
		{
			c->silent_left--;
			continue;
		}
		s = c;
		break;
	}
	if (s == NULL)
	{
		/* everybody silent: the next one speaks up */
		s = &gen->sensors[gen->next];
		s->silent_left = 0;
		gen->last = gen->next;
		gen->next = (gen->next + 1) % gen->nsensors;
	}

	ts = gen->virtual_time ? gen->start_ts + (int64) (gen->emitted * gen->step_us) : now;
	gen->emitted++;

	/* the physical signal */
	unix_s = (double) ts / USECS_PER_SEC + (double) (POSTGRES_EPOCH_JDATE - UNIX_EPOCH_JDATE) * SECS_PER_DAY;
	dayfrac = fmod(unix_s, 86400.0) / 86400.0;
	s->drift += gaussian(&s->rng) * 0.01;
	if (s->drift > 3.0)
		s->drift = 3.0;
	else if (s->drift < -3.0)
		s->drift = -3.0;
	clean_t = s->base_t + s->amp * sin(2.0 * M_PI * (dayfrac - 0.375 + s->phase)) + s->drift;
	t = clean_t + gaussian(&s->rng) * s->noise_t;

	if (s->episode_left > 0)
	{
		double		progress = 1.0 - (double) s->episode_left / s->episode_len;
		double		bump = s->episode_peak * sin(M_PI * progress);

		t += bump;
		clean_t += bump;
		s->episode_left--;
	}
	else if (uniform(&s->rng) < 0.0005)
	{
		s->episode_len = s->episode_left = uniform_int(&s->rng, 60, 300);
		s->episode_peak = 15.0 + 30.0 * uniform(&s->rng);
	}
	if (uniform(&s->rng) < 0.001)
		t += (uniform(&s->rng) < 0.5 ? -1.0 : 1.0) * (10.0 + 15.0 * uniform(&s->rng));

	h = s->base_h - 1.5 * (clean_t - s->base_t) + gaussian(&s->rng) * s->noise_h;
	if (h < 0)
		h = 0;
	if (h > 100)
		h = 100;
	if (t < -273.15)
		t = -273.15;

	if (s->stuck_left > 0)
	{
		t = s->stuck_t;
		h = s->stuck_h;
		s->stuck_left--;
	}
	else if (uniform(&s->rng) < 0.0003)
	{
		s->stuck_left = uniform_int(&s->rng, 20, 200);
		s->stuck_t = t;
		s->stuck_h = h;
	}
	if (uniform(&s->rng) < 0.0002)
		s->silent_left = uniform_int(&s->rng, 30, 600);

	/* the message */
	if (gen->malformed_ratio > 0 && uniform(&s->rng) < gen->malformed_ratio)
	{
		int			kind = uniform_int(&s->rng, 0, 9);

		if (gen->skipping)
			return true;
		if (kind == 6 && gen->text_safe)
			kind = 7;
		switch (kind)
		{
			case 0:				/* truncated */
				{
					int			start = buf->len;

					append_valid(buf, s, ts, t, h);
					buf->len = start + (buf->len - start) / 2;
					buf->data[buf->len] = '\0';
					break;
				}
			case 1:
				appendStringInfo(buf, "{\"sensor_id\":\"%s\",\"ts\":\"", s->id);
				append_ts(buf, ts);
				appendStringInfo(buf, "\",\"temperature\":%.2f,\"humidity\":150.0}", t);
				break;
			case 2:
				appendStringInfo(buf, "{\"sensor_id\":\"%s\",\"ts\":\"", s->id);
				append_ts(buf, ts);
				appendStringInfo(buf, "\",\"temperature\":\"%.2f\"}", t);
				break;
			case 3:
				appendStringInfo(buf, "{\"sensor_id\":\"%s\",\"temperature\":%.2f}", s->id, t);
				break;
			case 4:
				appendStringInfo(buf, "%s temperature=%.2f humidity=%.2f", s->id, t, h);
				break;
			case 5:
				appendStringInfo(buf, "{\"sensor_id\":\"%s\",\"ts\":\"2026-01-01T00:00:00\",\"temperature\":%.2f}", s->id, t);
				break;
			case 6:
				appendStringInfo(buf, "{\"sensor_id\":\"%s\xff\xfe\",\"ts\":\"", s->id);
				append_ts(buf, ts);
				appendStringInfo(buf, "\",\"temperature\":%.2f}", t);
				break;
			case 7:
				appendStringInfo(buf, "{\"sensor_id\":\"%s\",\"ts\":\"", s->id);
				append_ts(buf, ts);
				appendStringInfoString(buf, "\",\"temperature\":-300.0}");
				break;
			case 8:
				appendStringInfo(buf, "[\"%s\",%.2f,%.2f]", s->id, t, h);
				break;
			default:
				appendStringInfo(buf, "{\"sensor_id\":\"%s\",\"ts\":\"1999-12-31T23:59:59Z\",\"temperature\":%.2f}", s->id, t);
				break;
		}
		return true;
	}
	if (gen->skipping)
		return false;
	append_valid(buf, s, ts, t, h);
	return false;
}

int64
simgen_position(SimGen *gen)
{
	return (int64) gen->emitted;
}

/*
 * Fast-forward: the same draws from every PRNG as simgen_next(), in the same
 * order, without formatting a message (formatting draws nothing).  The state
 * cannot be computed in closed form (drift, episodes, stuck values and
 * silences depend on every earlier draw), so this costs the signal's
 * arithmetic for each skipped reading.
 */
void
simgen_skip(SimGen *gen, int64 n)
{
	gen->skipping = true;
	while (n-- > 0)
		(void) simgen_next(gen, NULL, 0);
	gen->skipping = false;
}
