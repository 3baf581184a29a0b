"""The features spreadsheet of one centre (`Lymphnode US features Database <n>.xlsx`), read as a person sees it.

parse_spreadsheet returns its rows as typed dicts (lymphus_ml.release.SPREADSHEET_COLUMNS names the columns): every
cell as shown in a spreadsheet program (a formula's last computed value, a number at its displayed decimals), blanks
as None, the yes/no words the sheet may use as 0/1; a cell that cannot be read so stops the export, naming it.
"""

import io
import re
import zipfile
from decimal import ROUND_HALF_UP, Decimal

import numpy as np

from lymphus_ml.release import (
    CODED_FEATURES,
    MEASUREMENT_FEATURES,
    MEMBER_SIZE_CAP,
    SPREADSHEET_COLUMNS,
    YES_NO_WORDS,
    LymphUsFormatError,
)


# A number written as text in a cell: ASCII digits only (float() alone also takes "١", "1_000", "nan", "inf").
_NUMBER_TEXT = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?", re.ASCII)


def parse_spreadsheet(xlsx_bytes, where):
    """Rows of the features sheet as typed dicts; blank rows skipped; each bad cell named.

    Every cell is read as a person sees it in a spreadsheet program (see cell_as_shown); a cell whose shown value
    cannot be read from the file stops the export, as does a value outside the header's columns.
    """
    import openpyxl

    check_xlsx_size(xlsx_bytes, where)
    try:
        # Twice: the values as last computed (what is shown), and the formulas (to tell a formula never computed).
        shown = openpyxl.load_workbook(io.BytesIO(xlsx_bytes), data_only=True).worksheets[0]
        stored = openpyxl.load_workbook(io.BytesIO(xlsx_bytes), data_only=False).worksheets[0]
    except Exception as error:
        raise LymphUsFormatError(f"{where}: not a readable .xlsx workbook ({error})") from None
    check_merged_cells(shown, where)
    rows = zip(shown.iter_rows(), stored.iter_rows())
    header_cells, _ = next(rows, ((), ()))
    header = [str(cell.value).strip() if cell.value is not None else "" for cell in header_cells]
    while header and header[-1] == "":
        header.pop()
    if header != list(SPREADSHEET_COLUMNS):
        missing = [h for h in SPREADSHEET_COLUMNS if h not in header]
        unexpected = [h for h in header if h not in SPREADSHEET_COLUMNS]
        raise LymphUsFormatError(
            f"{where}: row 1 headers differ from the official ones; missing {missing}, unexpected {unexpected}, got "
            f"{header}"
        )
    parsed, seen = [], {}
    for row_number, (shown_cells, stored_cells) in enumerate(rows, start=2):
        values = []
        for column, (cell, formula) in enumerate(zip(shown_cells, stored_cells)):
            name = header[column] if column < len(header) else None
            place = (
                f"{where} row {row_number} column '{name}'"
                if name
                else f"{where} row {row_number} cell {cell.coordinate}"
            )
            value = cell_as_shown(cell, formula, place)
            if name is None and not is_blank(value):
                raise LymphUsFormatError(
                    f"{place}: value {value!r} is outside the {len(header)} official columns; move it or delete it."
                )
            values.append(value)
        values = values[: len(header)] + [None] * (len(header) - len(values))
        if all(is_blank(value) for value in values):
            continue
        record = {"row": row_number}
        for column, value in zip(SPREADSHEET_COLUMNS, values):
            record[SPREADSHEET_COLUMNS[column]] = parse_cell(
                value, SPREADSHEET_COLUMNS[column], f"{where} row {row_number} column '{column}'"
            )
        if record["image_name"] is None or record["group"] is None:
            raise LymphUsFormatError(
                f"{where} row {row_number}: 'Image name' and 'Group' must both be filled, got {values[:2]}"
            )
        key = (record["group"], record["image_name"])
        if key in seen:
            raise LymphUsFormatError(
                f"{where} rows {seen[key]} and {row_number}: both are Group {key[0]}, Image name {key[1]}"
            )
        seen[key] = row_number
        parsed.append(record)
    return parsed


def is_blank(value):
    return value is None or (isinstance(value, str) and not value.strip())


def check_xlsx_size(xlsx_bytes, where):
    """An .xlsx is itself a zip: refuse one that would inflate past MEMBER_SIZE_CAP before openpyxl inflates it."""
    try:
        with zipfile.ZipFile(io.BytesIO(xlsx_bytes)) as workbook:
            inflated = sum(info.file_size for info in workbook.infolist())
    except zipfile.BadZipFile as error:
        raise LymphUsFormatError(f"{where}: not a readable .xlsx workbook ({error})") from None
    if inflated > MEMBER_SIZE_CAP:
        raise LymphUsFormatError(
            f"{where}: the workbook inflates to {inflated:,} bytes, more than the cap of {MEMBER_SIZE_CAP:,}; "
            "nothing was inflated."
        )


def check_merged_cells(sheet, where):
    """A merged range shows one value across several cells but stores it in the first only: the others would read
    blank."""
    for merged in sheet.merged_cells.ranges:
        first = sheet.cell(merged.min_row, merged.min_col)
        if not is_blank(first.value):
            raise LymphUsFormatError(
                f"{where} cells {merged.coord}: merged, so {first.value!r} shows in each of them but is stored in "
                f"{first.coordinate} only; unmerge the cells and fill each one."
            )


def cell_as_shown(cell, formula_cell, where):
    """The value a person sees in the cell: a formula's last computed value, a number at its displayed decimals.

    A formula saved without its computed value (files written by scripts) has nothing to show: that stops the
    export, naming the cell, instead of becoming a blank.
    """
    if formula_cell.data_type == "f" and cell.value is None:
        text = (
            formula_cell.value
            if isinstance(formula_cell.value, str)
            else getattr(formula_cell.value, "text", formula_cell.value)
        )
        raise LymphUsFormatError(
            f"{where}: the formula {text} has no computed value saved in the file; open and save the workbook in a "
            f"spreadsheet program, or type the value."
        )
    return number_as_shown(cell.value, cell.number_format, where)


def number_as_shown(value, number_format, where):
    """A number rounded to the decimals its format shows (12.345 formatted "0.0" is shown, and read, as 12.3).

    Formats that change more than the decimals (percent, scientific, fractions, hidden ";;;") stop the export,
    naming the cell. "General" shows the number as stored. Excel rounds half away from zero: so does this.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)) or number_format in (None, "General", "@"):
        return value
    # Drop what does not change the number: quoted text, escaped characters, padding, colours and conditions.
    section = re.sub(r'"[^"]*"|\\.|_.|\*.|\[[^\]]*\]', "", number_format).split(";")[0].strip()
    if section.lower() == "general":  # e.g. "[$-409]General": a locale tag, then General
        return value
    if not re.fullmatch(r"[#0,]*(\.[#0]*)?", section) or not re.search(r"[#0]", section):
        raise LymphUsFormatError(
            f"{where}: the number {value!r} is shown through the format {number_format!r}, which changes more than "
            f"its decimals; set the cell's format to General or type the value as it should read."
        )
    if isinstance(value, int):
        return value
    decimals = len(section.partition(".")[2])
    return float(Decimal(repr(value)).quantize(Decimal(1).scaleb(-decimals), rounding=ROUND_HALF_UP))


def parse_cell(value, column, where):
    """One spreadsheet cell as its typed value: blank -> None (never 0), a bad value -> an error naming it."""
    if isinstance(value, str):
        value = value.strip()
        if value == "":
            return None
    if value is None:
        return None
    if column == "group":
        if isinstance(value, str) and value.capitalize() in ("Benign", "Malignant"):
            return value.capitalize()
        raise LymphUsFormatError(f"{where}: value {value!r} is neither 'Benign' nor 'Malignant'")
    if isinstance(value, str) and column in CODED_FEATURES and value.lower() in YES_NO_WORDS:
        return YES_NO_WORDS[value.lower()]
    try:
        number = float(value) if not isinstance(value, str) or _NUMBER_TEXT.fullmatch(value) else float("nan")
    except (TypeError, ValueError):
        number = float("nan")
    if isinstance(value, bool) or not np.isfinite(number):
        raise LymphUsFormatError(
            f"{where}: value {value!r} is not a number" + (" or a yes/no word" if column in CODED_FEATURES else "")
        )
    if column in MEASUREMENT_FEATURES:
        return number
    if number != int(number):
        raise LymphUsFormatError(f"{where}: value {value!r} is not a whole number (expected an integer code)")
    return int(number)

