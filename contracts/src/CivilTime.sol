// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.28;

/// @title CivilTime
/// @notice The proleptic Gregorian UTC date of a Unix timestamp (non-negative), in integer
/// arithmetic. Days are counted from 0000-03-01 so that the leap day is the last day of a
/// "year" starting in March; 400-year eras hold exactly 146097 days.
library CivilTime {
    uint256 private constant SECONDS_PER_DAY = 86_400;
    /// days from 0000-03-01 to 1970-01-01
    uint256 private constant EPOCH_SHIFT = 719_468;
    uint256 private constant DAYS_PER_ERA = 146_097;

    /// @notice (year, month 1-12, day 1-31) of `timestamp` (Unix seconds, UTC).
    function date(uint256 timestamp)
        internal
        pure
        returns (uint256 y, uint256 m, uint256 d)
    {
        unchecked {
            uint256 z = timestamp / SECONDS_PER_DAY + EPOCH_SHIFT;
            uint256 era = z / DAYS_PER_ERA;
            uint256 dayOfEra = z - era * DAYS_PER_ERA; // 0 .. 146096
            // year of era, 0 .. 399: remove the leap days before dayOfEra (one per 4 years,
            // less one per 100, plus one per 400), then divide by 365
            uint256 yearOfEra =
                (dayOfEra - dayOfEra / 1460 + dayOfEra / 36_524 - dayOfEra / 146_096) / 365;
            uint256 dayOfYear = dayOfEra - (365 * yearOfEra + yearOfEra / 4 - yearOfEra / 100);
            // month counted from March (0) to February (11): 153 days per 5 months
            uint256 shiftedMonth = (5 * dayOfYear + 2) / 153;
            d = dayOfYear - (153 * shiftedMonth + 2) / 5 + 1;
            m = shiftedMonth < 10 ? shiftedMonth + 3 : shiftedMonth - 9;
            y = yearOfEra + era * 400 + (m <= 2 ? 1 : 0);
        }
    }

    /// @notice The UTC calendar year of `timestamp`.
    function year(uint256 timestamp) internal pure returns (uint256 y) {
        (y,,) = date(timestamp);
    }
}
