/*-------------------------------------------------------------------------
 *
 * pgshim.c
 *	  The few server functions src/jsonmsg.c calls, for running the parser
 *	  outside a backend (the libFuzzer harness, fuzz_jsonmsg.c).
 *
 *	  Encoding checks come from PostgreSQL's own libpgcommon (wchar.c:
 *	  pg_encoding_verifymbstr, pg_utf_mblen, unicode_to_utf8) and
 *	  formatting from libpgport (pg_vsnprintf), so the parser sees the
 *	  server's behaviour.  Memory is the one thing done differently: every
 *	  allocation is tracked and freed after each input (shim_reset), so
 *	  that LeakSanitizer reports only what the parser itself loses, and
 *	  AddressSanitizer sees every allocation as its own heap block.
 *
 *	  date2j() and day_tab are PostgreSQL's (src/backend/utils/adt/
 *	  datetime.c, PostgreSQL License), which live in the backend only.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <stdlib.h>

#include "mb/pg_wchar.h"
#include "utils/datetime.h"
#include "utils/memutils.h"

#include "pgshim.h"

MemoryContext CurrentMemoryContext = NULL;

/* the GUC the parser reads (guc.c's default) */
int			iotpipe_kafka_max_message_bytes = 65536;

static void **blocks;
static int	nblocks;
static int	maxblocks;

static void *
track(void *p)
{
	if (p == NULL)
		abort();
	if (nblocks == maxblocks)
	{
		maxblocks = maxblocks ? maxblocks * 2 : 64;
		blocks = realloc(blocks, sizeof(void *) * maxblocks);
		if (blocks == NULL)
			abort();
	}
	blocks[nblocks++] = p;
	return p;
}

void
shim_reset(void)
{
	int			i;

	for (i = 0; i < nblocks; i++)
		free(blocks[i]);
	nblocks = 0;
}

void *
palloc(Size size)
{
	return track(malloc(size ? size : 1));
}

void *
MemoryContextAlloc(MemoryContext context, Size size)
{
	return palloc(size);
}

void
pfree(void *pointer)
{
	int			i;

	for (i = nblocks - 1; i >= 0; i--)
	{
		if (blocks[i] == pointer)
		{
			free(pointer);
			blocks[i] = blocks[--nblocks];
			return;
		}
	}
	abort();					/* pfree of something palloc never returned */
}

char *
pnstrdup(const char *in, Size len)
{
	Size		n = strnlen(in, len);
	char	   *out = palloc(n + 1);

	memcpy(out, in, n);
	out[n] = '\0';
	return out;
}

char *
MemoryContextStrdup(MemoryContext context, const char *string)
{
	return pnstrdup(string, strlen(string));
}

char *
psprintf(const char *fmt,...)
{
	va_list		args;
	int			n;
	char	   *out;

	va_start(args, fmt);
	n = pg_vsnprintf(NULL, 0, fmt, args);
	va_end(args);
	if (n < 0)
		abort();
	out = palloc(n + 1);
	va_start(args, fmt);
	pg_vsnprintf(out, n + 1, fmt, args);
	va_end(args);
	return out;
}

/* mbutils.c's, for the one encoding the parser uses */
bool
pg_verify_mbstr(int encoding, const char *mbstr, int len, bool noError)
{
	if (encoding != PG_UTF8 || !noError)
		abort();
	return pg_encoding_verifymbstr(encoding, mbstr, len) == len;
}

int
pg_mbstrlen_with_len(const char *mbstr, int limit)
{
	int			len = 0;

	while (limit > 0 && *mbstr)
	{
		int			l = pg_utf_mblen((const unsigned char *) mbstr);

		limit -= l;
		mbstr += l;
		len++;
	}
	return len;
}

const int	day_tab[2][13] =
{
	{31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31, 0},
	{31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31, 0}
};

int
date2j(int y, int m, int d)
{
	int			julian;
	int			century;

	if (m > 2)
	{
		m += 1;
		y += 4800;
	}
	else
	{
		m += 13;
		y += 4799;
	}

	century = y / 100;
	julian = y * 365 - 32167;
	julian += y / 4 - century + century / 4;
	julian += 7834 * m / 256 + d;

	return julian;
}
