/*-------------------------------------------------------------------------
 *
 * spiutil.c
 *	  Plans kept for the life of the backend and array builders, shared by
 *	  every module that runs SQL through SPI.
 *
 *-------------------------------------------------------------------------
 */
#include "iotpipe.h"
#include "spiutil.h"

#include "catalog/pg_type.h"
#include "utils/array.h"
#include "utils/lsyscache.h"

SPIPlanPtr
iotpipe_keep_plan(const char *sql, int nargs, const Oid *types, int cursor_options)
{
	SPIPlanPtr	plan = SPI_prepare_cursor(sql, nargs, (Oid *) types, cursor_options);

	if (plan == NULL)
		elog(ERROR, "SPI_prepare failed for \"%s\": %s", sql, SPI_result_code_string(SPI_result));
	if (SPI_keepplan(plan) != 0)
		elog(ERROR, "SPI_keepplan failed for \"%s\"", sql);
	return plan;
}

Datum
iotpipe_array(Datum *elems, bool *nulls, int n, Oid type)
{
	int			dims[1] = {n};
	int			lbs[1] = {1};
	int16		typlen;
	bool		typbyval;
	char		typalign;

	get_typlenbyvalalign(type, &typlen, &typbyval, &typalign);
	return PointerGetDatum(construct_md_array(elems, nulls, 1, dims, lbs, type,
											  typlen, typbyval, typalign));
}

Datum
iotpipe_text_array(Datum *elems, bool *nulls, int n)
{
	return iotpipe_array(elems, nulls, n, TEXTOID);
}

Datum
iotpipe_float8_array(Datum *elems, bool *nulls, int n)
{
	return iotpipe_array(elems, nulls, n, FLOAT8OID);
}

Datum
iotpipe_byval_array(Datum *elems, bool *nulls, int n, Oid type)
{
	return iotpipe_array(elems, nulls, n, type);
}
