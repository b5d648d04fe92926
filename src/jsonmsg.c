/*-------------------------------------------------------------------------
 *
 * jsonmsg.c
 *	  Parse and validate one contract message:
 *
 *	    {"sensor_id": "...", "ts": "RFC 3339" | epoch-ms, "temperature": n,
 *	     "humidity": n, "location": "..."}
 *
 *	  A strict, single-pass, allocation-free (but for location) JSON reader
 *	  that understands only what the contract needs and skips (while still
 *	  validating) everything else.  It never throws on bad input: it returns
 *	  a reason that goes to iotpipe.dead_letters.error verbatim, so reasons
 *	  are short, lowercase and stable (tests and users match on them).
 *
 *-------------------------------------------------------------------------
 */
#include "iotpipe.h"
#include "guc.h"
#include "jsonmsg.h"

#include <math.h>

#include "mb/pg_wchar.h"
#include "utils/datetime.h"
#include "utils/timestamp.h"

#define MAX_DEPTH			64
#define MAX_LOCATION_CHARS	256

typedef struct JReader
{
	const char *start;
	const char *p;
	const char *end;
	const char *err;			/* first error, static or palloc'd */
	MemoryContext cxt;
} JReader;

/* kinds of JSON values as seen by the reader */
typedef enum JKind
{
	JK_STRING, JK_NUMBER, JK_OBJECT, JK_ARRAY, JK_TRUE, JK_FALSE, JK_NULL, JK_BAD
} JKind;

static const char *
jerr(JReader *r, const char *fmt,...) pg_attribute_printf(2, 3);

static const char *
jerr(JReader *r, const char *fmt,...)
{
	if (r->err == NULL)
	{
		char		buf[200];
		va_list		ap;

		va_start(ap, fmt);
		vsnprintf(buf, sizeof(buf), fmt, ap);
		va_end(ap);
		r->err = MemoryContextStrdup(r->cxt, buf);
	}
	return r->err;
}

static inline void
skip_ws(JReader *r)
{
	while (r->p < r->end &&
		   (*r->p == ' ' || *r->p == '\t' || *r->p == '\n' || *r->p == '\r'))
		r->p++;
}

static const char *
unexpected(JReader *r)
{
	if (r->p >= r->end)
		return jerr(r, "invalid JSON: unexpected end of input");
	if ((unsigned char) *r->p >= 0x20 && (unsigned char) *r->p < 0x7f)
		return jerr(r, "invalid JSON: unexpected character '%c' at byte %d",
					*r->p, (int) (r->p - r->start));
	return jerr(r, "invalid JSON: unexpected byte 0x%02x at byte %d",
				(unsigned char) *r->p, (int) (r->p - r->start));
}

static inline int
hexval(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

static bool
read_hex4(JReader *r, unsigned int *cp)
{
	int			i;

	*cp = 0;
	if (r->end - r->p < 4)
	{
		jerr(r, "invalid JSON: truncated \\u escape");
		return false;
	}
	for (i = 0; i < 4; i++)
	{
		int			h = hexval(r->p[i]);

		if (h < 0)
		{
			jerr(r, "invalid JSON: bad \\u escape at byte %d", (int) (r->p - r->start));
			return false;
		}
		*cp = (*cp << 4) | h;
	}
	r->p += 4;
	return true;
}

/*
 * Read a string (r->p at the opening quote).  When out is not NULL, the
 * decoded UTF-8 is written there, up to outcap bytes; *outlen gets the full
 * decoded length even when it did not fit.  *has_nul is set when the string
 * contains \u0000.  The input was already checked to be valid UTF-8.
 */
static bool
read_string(JReader *r, char *out, int outcap, int *outlen, bool *has_nul)
{
	int			n = 0;

	Assert(*r->p == '"');
	r->p++;
	if (has_nul)
		*has_nul = false;
	for (;;)
	{
		const char *run = r->p;
		unsigned char c;

		/* copy a run of plain bytes at once */
		while (r->p < r->end && *r->p != '"' && *r->p != '\\' &&
			   (unsigned char) *r->p >= 0x20)
			r->p++;
		if (out && r->p > run)
		{
			int			len = r->p - run;

			if (n < outcap)
				memcpy(out + n, run, Min(len, outcap - n));
		}
		n += r->p - run;

		if (r->p >= r->end)
		{
			jerr(r, "invalid JSON: unterminated string");
			return false;
		}
		c = (unsigned char) *r->p;
		if (c == '"')
		{
			r->p++;
			break;
		}
		if (c < 0x20)
		{
			jerr(r, "invalid JSON: control character in string at byte %d",
				 (int) (r->p - r->start));
			return false;
		}
		/* backslash escape */
		r->p++;
		if (r->p >= r->end)
		{
			jerr(r, "invalid JSON: unterminated string");
			return false;
		}
		{
			char		esc = *r->p++;
			char		utf8[4];
			int			ulen = 1;

			switch (esc)
			{
				case '"':
					utf8[0] = '"';
					break;
				case '\\':
					utf8[0] = '\\';
					break;
				case '/':
					utf8[0] = '/';
					break;
				case 'b':
					utf8[0] = '\b';
					break;
				case 'f':
					utf8[0] = '\f';
					break;
				case 'n':
					utf8[0] = '\n';
					break;
				case 'r':
					utf8[0] = '\r';
					break;
				case 't':
					utf8[0] = '\t';
					break;
				case 'u':
					{
						unsigned int cp;

						if (!read_hex4(r, &cp))
							return false;
						if (cp >= 0xD800 && cp <= 0xDBFF)
						{
							unsigned int lo;

							if (r->end - r->p < 2 || r->p[0] != '\\' || r->p[1] != 'u')
							{
								jerr(r, "invalid JSON: lone surrogate in \\u escape");
								return false;
							}
							r->p += 2;
							if (!read_hex4(r, &lo))
								return false;
							if (lo < 0xDC00 || lo > 0xDFFF)
							{
								jerr(r, "invalid JSON: lone surrogate in \\u escape");
								return false;
							}
							cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
						}
						else if (cp >= 0xDC00 && cp <= 0xDFFF)
						{
							jerr(r, "invalid JSON: lone surrogate in \\u escape");
							return false;
						}
						if (cp == 0 && has_nul)
							*has_nul = true;
						unicode_to_utf8((pg_wchar) cp, (unsigned char *) utf8);
						ulen = pg_utf_mblen((unsigned char *) utf8);
						break;
					}
				default:
					r->p--;
					jerr(r, "invalid JSON: bad escape at byte %d", (int) (r->p - r->start));
					return false;
			}
			if (out && n + ulen <= outcap)
				memcpy(out + n, utf8, ulen);
			n += ulen;
		}
	}
	if (outlen)
		*outlen = n;
	return true;
}

/*
 * Read a number token per the JSON grammar; returns its extent.
 */
static bool
read_number(JReader *r, const char **tok, int *toklen, bool *integral)
{
	const char *s = r->p;

	*integral = true;
	if (r->p < r->end && *r->p == '-')
		r->p++;
	if (r->p >= r->end)
		goto bad;
	if (*r->p == '0')
		r->p++;
	else if (*r->p >= '1' && *r->p <= '9')
		while (r->p < r->end && *r->p >= '0' && *r->p <= '9')
			r->p++;
	else
		goto bad;
	if (r->p < r->end && *r->p == '.')
	{
		*integral = false;
		r->p++;
		if (r->p >= r->end || !(*r->p >= '0' && *r->p <= '9'))
			goto bad;
		while (r->p < r->end && *r->p >= '0' && *r->p <= '9')
			r->p++;
	}
	if (r->p < r->end && (*r->p == 'e' || *r->p == 'E'))
	{
		*integral = false;
		r->p++;
		if (r->p < r->end && (*r->p == '+' || *r->p == '-'))
			r->p++;
		if (r->p >= r->end || !(*r->p >= '0' && *r->p <= '9'))
			goto bad;
		while (r->p < r->end && *r->p >= '0' && *r->p <= '9')
			r->p++;
	}
	*tok = s;
	*toklen = r->p - s;
	return true;
bad:
	unexpected(r);
	return false;
}

static bool
match_literal(JReader *r, const char *lit, int len)
{
	if (r->end - r->p >= len && memcmp(r->p, lit, len) == 0)
	{
		r->p += len;
		return true;
	}
	unexpected(r);
	return false;
}

static JKind
peek_kind(JReader *r)
{
	if (r->p >= r->end)
		return JK_BAD;
	switch (*r->p)
	{
		case '"':
			return JK_STRING;
		case '{':
			return JK_OBJECT;
		case '[':
			return JK_ARRAY;
		case 't':
			return JK_TRUE;
		case 'f':
			return JK_FALSE;
		case 'n':
			return JK_NULL;
		default:
			if (*r->p == '-' || (*r->p >= '0' && *r->p <= '9'))
				return JK_NUMBER;
			return JK_BAD;
	}
}

/* skip any value, validating it; depth counts the enclosing containers */
static bool
skip_value(JReader *r, int depth)
{
	const char *tok;
	int			toklen;
	bool		integral;

	skip_ws(r);
	switch (peek_kind(r))
	{
		case JK_STRING:
			return read_string(r, NULL, 0, NULL, NULL);
		case JK_NUMBER:
			return read_number(r, &tok, &toklen, &integral);
		case JK_TRUE:
			return match_literal(r, "true", 4);
		case JK_FALSE:
			return match_literal(r, "false", 5);
		case JK_NULL:
			return match_literal(r, "null", 4);
		case JK_OBJECT:
		case JK_ARRAY:
			{
				bool		obj = (*r->p == '{');
				char		close = obj ? '}' : ']';

				if (depth + 1 > MAX_DEPTH)
				{
					jerr(r, "invalid JSON: nesting deeper than %d levels", MAX_DEPTH);
					return false;
				}
				r->p++;
				skip_ws(r);
				if (r->p < r->end && *r->p == close)
				{
					r->p++;
					return true;
				}
				for (;;)
				{
					if (obj)
					{
						skip_ws(r);
						if (r->p >= r->end || *r->p != '"')
						{
							unexpected(r);
							return false;
						}
						if (!read_string(r, NULL, 0, NULL, NULL))
							return false;
						skip_ws(r);
						if (r->p >= r->end || *r->p != ':')
						{
							unexpected(r);
							return false;
						}
						r->p++;
					}
					if (!skip_value(r, depth + 1))
						return false;
					skip_ws(r);
					if (r->p < r->end && *r->p == ',')
					{
						r->p++;
						continue;
					}
					if (r->p < r->end && *r->p == close)
					{
						r->p++;
						return true;
					}
					unexpected(r);
					return false;
				}
			}
		case JK_BAD:
			break;
	}
	unexpected(r);
	return false;
}

/* ---------- timestamps ---------- */

static inline bool
digits(const char *s, const char *end, int n, int *val)
{
	int			v = 0;
	int			i;

	if (end - s < n)
		return false;
	for (i = 0; i < n; i++)
	{
		if (s[i] < '0' || s[i] > '9')
			return false;
		v = v * 10 + (s[i] - '0');
	}
	*val = v;
	return true;
}

/*
 * RFC 3339 / ISO 8601 with a mandatory zone:
 *   YYYY-MM-DD('T'|'t'|' ')HH:MM[:SS[.fraction]]('Z'|'z'|(+|-)HH[[:]MM])
 * Returns NULL and sets *result, or a reason.
 */
static const char *
parse_iso_ts(const char *s, int len, TimestampTz *result)
{
	const char *p = s;
	const char *end = s + len;
	int			year,
				mon,
				day,
				hour,
				min,
				sec = 0;
	int64		usec = 0;
	int			tzsign,
				tzh = 0,
				tzm = 0;
	int64		days;
	static const char *const bad = "ts is not an ISO-8601 timestamp with a time zone";

	if (!digits(p, end, 4, &year) || end - p < 10 || p[4] != '-')
		return bad;
	p += 5;
	if (!digits(p, end, 2, &mon) || p + 2 >= end || p[2] != '-')
		return bad;
	p += 3;
	if (!digits(p, end, 2, &day))
		return bad;
	p += 2;
	if (p >= end || (*p != 'T' && *p != 't' && *p != ' '))
		return (p >= end) ? "ts has no time of day or time zone" : bad;
	p++;
	if (!digits(p, end, 2, &hour) || p + 2 >= end || p[2] != ':')
		return bad;
	p += 3;
	if (!digits(p, end, 2, &min))
		return bad;
	p += 2;
	if (p < end && *p == ':')
	{
		p++;
		if (!digits(p, end, 2, &sec))
			return bad;
		p += 2;
		if (p < end && (*p == '.' || *p == ','))
		{
			int64		scale = 100000;
			int			nd = 0;

			p++;
			while (p < end && *p >= '0' && *p <= '9')
			{
				if (nd < 6)
					usec += (*p - '0') * scale;
				else if (nd == 6 && *p >= '5')
					usec += 1;	/* round half up at microseconds */
				scale /= 10;
				nd++;
				p++;
			}
			if (nd == 0)
				return bad;
		}
	}
	if (p >= end)
		return "ts has no time zone";
	if (*p == 'Z' || *p == 'z')
	{
		tzsign = 0;
		p++;
	}
	else if (*p == '+' || *p == '-')
	{
		tzsign = (*p == '+') ? 1 : -1;
		p++;
		if (!digits(p, end, 2, &tzh))
			return bad;
		p += 2;
		if (p < end && *p == ':')
			p++;
		if (p < end)
		{
			if (!digits(p, end, 2, &tzm))
				return bad;
			p += 2;
		}
		if (tzh > 15 || tzm > 59)
			return "ts has an invalid time zone offset";
	}
	else
		return bad;
	if (p != end)
		return bad;

	if (mon < 1 || mon > 12 || day < 1 ||
		day > day_tab[isleap(year)][mon - 1] ||
		hour > 23 || min > 59 || sec > 60)
		return "ts is not a valid date and time";

	days = date2j(year, mon, day) - POSTGRES_EPOCH_JDATE;
	*result = days * USECS_PER_DAY +
		((int64) hour * 3600 + min * 60 + sec) * USECS_PER_SEC + usec;
	if (tzsign != 0)
		*result -= tzsign * ((int64) tzh * 3600 + tzm * 60) * USECS_PER_SEC;
	return NULL;
}

/* parse a JSON number token as a double; NULL or a reason */
static const char *
token_to_double(const char *tok, int toklen, double *val, const char *field)
{
	char		buf[128];
	char	   *s = buf;
	char	   *endp;

	if (toklen >= (int) sizeof(buf))
		s = pnstrdup(tok, toklen);
	else
	{
		memcpy(buf, tok, toklen);
		buf[toklen] = '\0';
	}
	errno = 0;
	*val = strtod(s, &endp);
	if (s != buf)
		pfree(s);
	if (isinf(*val) || isnan(*val))
		return psprintf("%s is not a finite number", field);
	return NULL;
}

/*
 * Parse one message.  See iotpipe.h.
 */
const char *
iotpipe_parse_message(const char *data, size_t len, IotReading *out,
					  TimestampTz now, MemoryContext strcxt)
{
	JReader		r;
	bool		seen_sensor = false,
				seen_ts = false;
	const char *ts_err = NULL;
	const char *field_err = NULL;

	if (len > (size_t) iotpipe_kafka_max_message_bytes)
		return psprintf("message too large: %zu bytes (limit %d)",
						len, iotpipe_kafka_max_message_bytes);
	if (len == 0)
		return "empty message";
	if (memchr(data, '\0', len) != NULL)
		return "message contains a NUL byte";
	if (!pg_verify_mbstr(PG_UTF8, data, (int) len, true))
		return "message is not valid UTF-8";

	r.start = r.p = data;
	r.end = data + len;
	r.err = NULL;
	r.cxt = CurrentMemoryContext;

	out->sensor_id_len = 0;
	out->has_temperature = out->has_humidity = false;
	out->location = NULL;
	out->location_len = 0;

	skip_ws(&r);
	if (r.p >= r.end)
		return "empty message";
	if (*r.p != '{')
	{
		/* tell "valid JSON, wrong shape" from "not JSON at all" */
		if (skip_value(&r, 0))
		{
			skip_ws(&r);
			if (r.p == r.end)
				return "not a JSON object";
			return jerr(&r, "invalid JSON: unexpected data after the value at byte %d",
						(int) (r.p - r.start));
		}
		return r.err;
	}
	r.p++;
	skip_ws(&r);
	if (r.p < r.end && *r.p == '}')
		r.p++;
	else
	{
		for (;;)
		{
			char		key[16];
			int			keylen;
			JKind		kind;

			skip_ws(&r);
			if (r.p >= r.end || *r.p != '"')
				return unexpected(&r);
			if (!read_string(&r, key, sizeof(key) - 1, &keylen, NULL))
				return r.err;
			if (keylen >= (int) sizeof(key))
				keylen = -1;	/* longer than any key we know */
			else
				key[keylen] = '\0';
			skip_ws(&r);
			if (r.p >= r.end || *r.p != ':')
				return unexpected(&r);
			r.p++;
			skip_ws(&r);
			kind = peek_kind(&r);

			if (keylen == 9 && strcmp(key, "sensor_id") == 0)
			{
				if (kind == JK_STRING)
				{
					int			n;
					bool		has_nul;

					if (!read_string(&r, out->sensor_id, sizeof(out->sensor_id) - 1, &n, &has_nul))
						return r.err;
					seen_sensor = true;
					if (n >= (int) sizeof(out->sensor_id))
					{
						if (!field_err)
							field_err = "sensor_id is longer than 64 characters";
					}
					else
					{
						out->sensor_id[n] = '\0';
						out->sensor_id_len = n;
						if (has_nul && !field_err)
							field_err = "sensor_id contains a NUL character";
						else if ((n == 0 || (n > IOTPIPE_MAX_SENSOR_ID &&
												 pg_mbstrlen_with_len(out->sensor_id, n) > IOTPIPE_MAX_SENSOR_ID)) && !field_err)
							field_err = "sensor_id must be 1 to 64 characters";
					}
				}
				else
				{
					if (!skip_value(&r, 1))
						return r.err;
					seen_sensor = true;
					if (!field_err)
						field_err = "sensor_id must be a string";
				}
			}
			else if (keylen == 2 && strcmp(key, "ts") == 0)
			{
				seen_ts = true;
				ts_err = NULL;
				if (kind == JK_STRING)
				{
					char		buf[64];
					int			n;

					if (!read_string(&r, buf, sizeof(buf), &n, NULL))
						return r.err;
					if (n > (int) sizeof(buf))
						ts_err = "ts is not an ISO-8601 timestamp with a time zone";
					else
						ts_err = parse_iso_ts(buf, n, &out->ts);
				}
				else if (kind == JK_NUMBER)
				{
					const char *tok;
					int			toklen;
					bool		integral;

					if (!read_number(&r, &tok, &toklen, &integral))
						return r.err;
					if (!integral || toklen > 18)
						ts_err = "ts must be integer epoch milliseconds or an ISO-8601 string";
					else
					{
						int64		ms = 0;
						int			i = (tok[0] == '-') ? 1 : 0;

						for (; i < toklen; i++)
							ms = ms * 10 + (tok[i] - '0');
						if (tok[0] == '-')
							ms = -ms;
						/* keep the conversion below far from overflow */
						if (ms < INT64CONST(946684800000))
							ts_err = "ts is before 2000-01-01";
						else if (ms > INT64CONST(100000000000000))
							ts_err = "ts is more than a day in the future";
						else	/* Unix epoch ms -> PostgreSQL epoch us */
							out->ts = ms * 1000 -
								((int64) (POSTGRES_EPOCH_JDATE - UNIX_EPOCH_JDATE) * USECS_PER_DAY);
					}
				}
				else
				{
					if (!skip_value(&r, 1))
						return r.err;
					if (kind == JK_NULL)
						seen_ts = false;
					else
						ts_err = "ts must be an ISO-8601 string or integer epoch milliseconds";
				}
			}
			else if ((keylen == 11 && strcmp(key, "temperature") == 0) ||
					 (keylen == 8 && strcmp(key, "humidity") == 0))
			{
				bool		is_temp = (keylen == 11);

				if (kind == JK_NUMBER)
				{
					const char *tok;
					int			toklen;
					bool		integral;
					double		v;
					const char *e;

					if (!read_number(&r, &tok, &toklen, &integral))
						return r.err;
					e = token_to_double(tok, toklen, &v, is_temp ? "temperature" : "humidity");
					if (e && !field_err)
						field_err = e;
					if (is_temp)
					{
						out->temperature = v;
						out->has_temperature = true;
					}
					else
					{
						out->humidity = v;
						out->has_humidity = true;
					}
				}
				else
				{
					if (!skip_value(&r, 1))
						return r.err;
					if (kind == JK_NULL)
					{
						if (is_temp)
							out->has_temperature = false;
						else
							out->has_humidity = false;
					}
					else if (!field_err)
						field_err = is_temp ? "temperature must be a number" : "humidity must be a number";
				}
			}
			else if (keylen == 8 && strcmp(key, "location") == 0)
			{
				if (kind == JK_STRING)
				{
					const char *save = r.p;
					int			n;
					bool		has_nul;

					/* measure, then decode into the batch context */
					if (!read_string(&r, NULL, 0, &n, &has_nul))
						return r.err;
					r.p = save;
					out->location = MemoryContextAlloc(strcxt, n + 1);
					if (!read_string(&r, out->location, n, &n, NULL))
						return r.err;
					out->location[n] = '\0';
					out->location_len = n;
					if (has_nul && !field_err)
						field_err = "location contains a NUL character";
					else if (n > MAX_LOCATION_CHARS &&
							 pg_mbstrlen_with_len(out->location, n) > MAX_LOCATION_CHARS && !field_err)
						field_err = "location is longer than 256 characters";
				}
				else
				{
					if (!skip_value(&r, 1))
						return r.err;
					out->location = NULL;
					if (kind != JK_NULL && !field_err)
						field_err = "location must be a string";
				}
			}
			else if (!skip_value(&r, 1))
				return r.err;

			skip_ws(&r);
			if (r.p < r.end && *r.p == ',')
			{
				r.p++;
				continue;
			}
			if (r.p < r.end && *r.p == '}')
			{
				r.p++;
				break;
			}
			return unexpected(&r);
		}
	}
	skip_ws(&r);
	if (r.p != r.end)
		return jerr(&r, "invalid JSON: unexpected data after the object at byte %d",
					(int) (r.p - r.start));

	/* the message is well-formed JSON: now the contract */
	if (!seen_sensor)
		return "missing sensor_id";
	if (field_err)
		return field_err;
	if (!seen_ts)
		return "missing ts";
	if (ts_err)
		return ts_err;
	if (!out->has_temperature && !out->has_humidity)
		return "no temperature or humidity";
	if (out->has_temperature && out->temperature < IOTPIPE_TEMPERATURE_MIN)
		return "temperature below absolute zero";
	if (out->has_temperature && out->temperature > IOTPIPE_TEMPERATURE_MAX)
		return "temperature above 10000 degrees C: no sensor reports that";
	if (out->has_humidity && (out->humidity < IOTPIPE_HUMIDITY_MIN ||
							  out->humidity > IOTPIPE_HUMIDITY_MAX))
		return "humidity outside 0-100";
	/* 2000-01-01 00:00:00+00 is the PostgreSQL epoch, i.e. 0 */
	if (out->ts < 0)
		return "ts is before 2000-01-01";
	if (out->ts > now + USECS_PER_DAY)
		return "ts is more than a day in the future";
	return NULL;
}
